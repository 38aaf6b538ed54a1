"""Plot helpers for benchmark figures a person can read at a glance: labelled axes with units,
the baseline marked, values written on bars. matplotlib with the Agg backend; every helper
saves ``benchmarks/results/<name>.png`` and returns the file name.

    from benchmarks import plots
    plots.grouped_bars("serving_ratio", ["batch 1", "batch 32"],
                       {"ONNX": [3.1, 2.2], "served": [1.4, 2.0]},
                       ylabel="throughput vs Keras (×)", title="...", baseline=1.0,
                       baseline_label="Keras = 1")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks import common

PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def grouped_bars(
    name: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    baseline: float | None = None,
    baseline_label: str = "baseline",
    upper_err: Mapping[str, Sequence[float]] | None = None,
    log: bool = False,
    value_fmt: str = "{:.2g}",
    colors: Mapping[str, str] | None = None,
    results_dir: Path | None = None,
) -> str:
    """One group of bars per ``groups`` entry, one bar per ``series`` entry (same length as groups).

    ``baseline`` draws a dashed horizontal line (e.g. 1.0 for ratios); ``upper_err`` adds
    whiskers above the bars (e.g. p99 over a p50 bar); ``log`` uses a log y axis.
    """
    plt = common.pyplot()
    n = max(1, len(series))
    width = min(0.8 / n, 0.3)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * len(groups) * max(1, n / 2)), 5))
    for i, (label, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        color = (colors or {}).get(label, PALETTE[i % len(PALETTE)])
        yerr = None
        if upper_err and label in upper_err:
            yerr = [[0] * len(vals), [max(0.0, u - v) for u, v in zip(upper_err[label], vals, strict=True)]]
        bars = ax.bar(xs, vals, width, label=label, color=color, yerr=yerr, capsize=2 if yerr else 0)
        for bar, v in zip(bars, vals, strict=True):
            if v == v:  # not NaN
                ax.text(bar.get_x() + bar.get_width() / 2, v, value_fmt.format(v), ha="center", va="bottom",
                        fontsize=7)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=baseline_label)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # Legend under the axes so it never hides a bar.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, n + 1), frameon=False)
    ax.grid(axis="y", alpha=0.3, which="both" if log else "major")
    return common.save_figure(fig, name, results_dir).name


def lines(
    name: str,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    baseline_series: str | None = None,
    logx: bool = False,
    logy: bool = False,
    results_dir: Path | None = None,
) -> str:
    """One line per series over ``x``; the ``baseline_series`` is drawn dashed in grey."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, ys) in enumerate(series.items()):
        if label == baseline_series:
            ax.plot(x, ys, "--", marker="o", color="grey", label=f"{label} (baseline)")
        else:
            ax.plot(x, ys, "-", marker="o", color=PALETTE[i % len(PALETTE)], label=label)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return common.save_figure(fig, name, results_dir).name
