"""`sbattn COMMAND ...`: the parser, the commands, and the one place errors become a line and an exit status."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import typing
from types import FrameType
from typing import Callable, Iterator, Sequence

from .. import console
from ..errors import SbattnError
from ..train import distributed
from ..version import __version__
from . import deploy, suites, train

__all__ = ["build_parser", "main", "COMMANDS", "EXAMPLES"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

# name -> (help, add options, run)
COMMANDS: dict[str, Command] = {
    "train": ("train one model (the reference implementation's `example.py main`)", train.add_train_options,
              train.run_train),
    "compare": ("attention kinds side by side over seeds (default baseline, SE and SB: the reference's first "
                "table) with statistics", suites.add_compare_options, suites.run_compare),
    "ablate": ("SB with each activation over seeds: the reference's second table with statistics",
               suites.add_ablate_options, suites.run_ablate),
    "report": ("rebuild a suite's tables and figures from its finished runs, without training",
               suites.add_report_options, suites.run_report),
    "summary": ("layer table, parameters and FLOPs of the models", train.add_summary_options, train.run_summary),
    "evaluate": ("test accuracy of a trained model (.pth or checkpoint)", deploy.add_evaluate_options,
                 deploy.run_evaluate),
    "predict": ("top-k classes with probabilities for image files", deploy.add_predict_options, deploy.run_predict),
    "export": ("export a trained model to ONNX or a torch.export program", deploy.add_export_options,
               deploy.run_export),
}


# One invocation per command, shown at the end of its --help (tests/test_cli_help.py parses each).
EXAMPLES = {
    "train": "sbattn train --preset airbench --attention sb --activation sigmoid --data-dir ./data --seed 0",
    "compare": "sbattn compare --preset airbench --seeds 5 --data-dir ./data",
    "ablate": "sbattn ablate --preset quick --seeds 3 --data-dir ./data",
    "report": "sbattn report results/compare-airbench",
    "summary": "sbattn summary --arch airbench --attention sb",
    "evaluate": "sbattn evaluate results/vgg16_0.5_True_False_tanh_seed0.pth --data-dir ./data",
    "predict": "sbattn predict results/vgg16_0.5_True_False_tanh_seed0.pth cat.png dog.jpg --topk 3",
    "export": "sbattn export results/vgg16_0.5_True_False_tanh_seed0.pth --format onnx",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbattn", description="Shift-and-Balance attention: train, compare and inspect models.")
    parser.add_argument("--version", action="version", version=f"sbattn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help, add_options, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, epilog=f"example: {EXAMPLES[name]}")
        add_options(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None, defaults: dict | None = None) -> int:
    """Run `sbattn` with `argv`; `defaults`: the training options an entry point sets where neither the command
    line nor --config does (example.py's: the reference's arithmetic)."""
    console.install()  # a closed or broken standard stream stops the printing, never the run
    args = build_parser().parse_args(argv)
    args.entry_defaults = dict(defaults or {})
    code = _run(args)
    if distributed.joined():  # a torchrun worker: its process ends here (see leave)
        distributed.leave(code)
    return code


# Commands without signal handling of their own (train and the suites stop at a step's end): SIGTERM interrupts
# them as Ctrl-C does, so that a file being written is removed with its staging folder, not left half-made.
SIGTERM_INTERRUPTS = ("report", "export", "evaluate", "predict", "summary")


@contextlib.contextmanager
def _sigterm_interrupts(command: str) -> Iterator[None]:
    if command not in SIGTERM_INTERRUPTS or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        with _sigterm_interrupts(args.command):
            return args.run(args)
    except SbattnError as e:
        if not e.quiet:  # under torchrun, one rank speaks for all that hit the same error
            print(f"sbattn {args.command}: {e.label}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"sbattn {args.command}: interrupted", file=sys.stderr)
        return 130
