"""Suite figures: accuracy curves and final accuracies across configurations, and SB's |lambda| over training.

Every function takes `runs`: configuration label -> the histories of its runs (one per seed, each the list of
per-epoch dicts a run's JSON holds), in the order the configurations should appear.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..records.figures import colormap, new_figure, save_figure
from .stats import sample_std

__all__ = ["plot_suite", "plot_lambda", "has_lambda", "mean_band"]

History = Sequence[dict]
FIGSIZE = (12, 4.5)


def mean_band(histories: Sequence[History], value: Callable[[dict], float | None]) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) over runs of value(entry) per epoch; std is 0 where fewer than two runs have a value."""
    per_epoch: dict[int, list[float]] = {}
    for history in histories:
        for entry in history:
            v = value(entry)
            if v is not None:
                per_epoch.setdefault(entry["epoch"], []).append(v)
    epochs = sorted(per_epoch)
    means = [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
    stds = [sample_std(per_epoch[e]) or 0.0 for e in epochs]
    return epochs, means, stds


def _final_acc(history: History) -> float | None:
    evaluated = [h["eval_acc"] for h in history if h.get("eval_acc") is not None]
    return 100 * evaluated[-1] if evaluated else None


def _colors(n: int) -> list:
    cmap = colormap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_suite(runs: Mapping[str, Sequence[History]], path: str | Path, title: str,
               finals: Mapping[str, Sequence[float]] | None = None) -> None:
    """Left: eval accuracy vs epoch, mean with a +-std band over seeds; right: final accuracy, bars +- std.

    finals: per label, the runs' final accuracies in percent (the tables' numbers: the final weights in fp32);
    none given: each history's last evaluation.
    """
    from matplotlib.ticker import MaxNLocator
    fig = new_figure(figsize=FIGSIZE)
    curves, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    labels, colors = list(runs), _colors(len(runs))
    final_accs: list[list[float]] = []
    for label, color in zip(labels, colors):
        histories = runs[label]
        epochs, means, stds = mean_band(histories, lambda h: None if h.get("eval_acc") is None
                                        else 100 * h["eval_acc"])
        curves.plot(epochs, means, "-o", color=color, markersize=3, linewidth=1.6,
                    label=f"{label} (n={len(histories)})")
        curves.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=color, alpha=0.2, linewidth=0)
        final = finals[label] if finals is not None else map(_final_acc, histories)
        final_accs.append([a for a in final if a is not None])
    curves.set_xlabel("epoch")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylabel("test accuracy (%)")
    curves.set_title("Test accuracy during training (mean ± std over seeds)")
    curves.grid(alpha=0.3)
    curves.legend(loc="lower right")

    means = [sum(f) / len(f) if f else math.nan for f in final_accs]
    stds = [sample_std(f) or 0.0 for f in final_accs]
    xs = range(len(labels))
    bars.bar(xs, means, yerr=stds, capsize=6, color=colors, alpha=0.85, edgecolor="black", linewidth=0.6)
    for x, m, s in zip(xs, means, stds):
        if not math.isnan(m):
            bars.annotate(f"{m:.2f}" + (f"\n±{s:.2f}" if s else ""), (x, m + s), textcoords="offset points",
                          xytext=(0, 4), ha="center", va="bottom", fontsize=9)
    crowded = len(labels) > 3
    bars.set_xticks(list(xs), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center",
                    rotation_mode="anchor")
    valid = [(m, s) for m, s in zip(means, stds) if not math.isnan(m)]
    if valid:  # the differences are tenths of a percent: zoom in, and say the axis does not start at 0
        low, high = min(m - s for m, s in valid), max(m + s for m, s in valid)
        margin = max(0.5, 0.25 * (high - low))
        bars.set_ylim(max(0.0, low - margin), min(100.0, high + 2 * margin))
    bars.set_ylabel("final test accuracy (%), axis zoomed")
    bars.set_title("Final accuracy (mean ± std)")
    bars.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def has_lambda(histories: Sequence[History]) -> bool:
    return any(h.get("lambda_abs_mean") for history in histories for h in history)


def plot_lambda(runs: Mapping[str, Sequence[History]], path: str | Path, title: str) -> None:
    """Per SB configuration: mean |lambda| of each SB block vs epoch, band = the spread (std) across channels.

    Both the mean and the spread are averaged over seeds. Configurations without lambda (baseline, SE) are left out.
    """
    runs = {label: histories for label, histories in runs.items() if has_lambda(histories)}
    if not runs:
        raise ValueError("no run with SB lambda statistics to plot")
    columns = min(3, len(runs))
    rows = math.ceil(len(runs) / columns)
    from matplotlib.ticker import MaxNLocator
    fig = new_figure(figsize=(max(8.0, 4.6 * columns + 1.5), 3.8 * rows + 0.6))
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    for ax, (label, histories) in zip(axes.flat, runs.items()):
        blocks = max(len(h.get("lambda_abs_mean") or ()) for history in histories for h in history)
        cmap = colormap("viridis")
        for block in range(blocks):
            color = cmap(block / max(1, blocks - 1))
            epochs, means, _ = mean_band(histories, lambda h: _at(h, "lambda_abs_mean", block))
            _, spreads, _ = mean_band(histories, lambda h: _at(h, "lambda_abs_std", block))
            ax.plot(epochs, means, "-", color=color, linewidth=1.5, label=f"block {block + 1}")
            ax.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                            color=color, alpha=0.12 if blocks <= 4 else 0.05, linewidth=0)
        ax.set_title(f"{label} (n={len(histories)})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("|lambda|: mean ± std over channels")
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", title="SB block\n(input → output)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    save_figure(fig, path)


def _at(entry: dict, key: str, index: int) -> float | None:
    values = entry.get(key) or ()
    return values[index] if index < len(values) else None
