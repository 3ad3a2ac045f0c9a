"""Every command's --help: the choices of each option that has them, one default per line, nothing repeated."""
import argparse

import pytest

from sbattn import TrainConfig
from sbattn.cli import build_parser
from sbattn.cli.main import COMMANDS

FIELDS = TrainConfig.__dataclass_fields__


def command_parser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def options(command: str):
    return [a for a in command_parser(command)._actions if a.option_strings and a.dest != "help"]


def choices_of(action: argparse.Action) -> list[str]:
    if action.choices:
        return [str(c) for c in action.choices]
    field = FIELDS.get(action.dest)
    return list(field.metadata["choices"]()) if field is not None and field.metadata["choices"] else []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_names_its_choices_and_at_most_one_default(command):
    for action in options(command):
        text = " ".join(action.help.split())
        where = f"{command} {action.option_strings[0]}: {text}"
        assert text.count("(default:") <= 1 and "default: None" not in text, where
        assert not ("(default:" in text and "none given" in text), where  # two defaults on one line
        assert all(choice in text for choice in choices_of(action)), where
        assert len(set(action.option_strings)) == len(action.option_strings), where


def test_the_seed_says_what_no_seed_means():
    train_seed = next(a for a in options("train") if a.dest == "seed")
    assert "none given: a random one, recorded in the run's files" in train_seed.help
    for suite in ("compare", "ablate"):
        seed = next(a for a in options(suite) if a.dest == "seed")
        assert "first seed" in seed.help and "(default: 0)" in seed.help and "random" not in seed.help


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_commands_help_ends_with_an_example_that_parses(command, capsys):
    from sbattn.cli.main import EXAMPLES, build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the epilog, even inside an option
    assert "".join(f"example: {EXAMPLES[command]}".split()) in shown
    program, name, *rest = EXAMPLES[command].split()
    args = build_parser().parse_args([name, *rest])  # an example that parses: every option in it exists
    assert (program, args.command) == ("sbattn", command)


def test_sbattn_version_prints_the_version(capsys):
    from sbattn import __version__
    from sbattn.cli.main import build_parser
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sbattn {__version__}"
