"""Charts for the dashboard (/ui), drawn on the server with matplotlib as inline SVG, so a page needs no
script or asset from anywhere. matplotlib is imported on first use only: the API starts without it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

WIDTH_IN, HEIGHT_IN = 8.0, 3.2  # the SVG scales to the page's width (see ui/html.py's CSS)
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


def _new_figure(height: float, width: float = WIDTH_IN) -> Any:
    """A figure without pyplot (no global figure registry: safe in the API's worker threads)."""
    import matplotlib

    matplotlib.use("Agg")
    # Text stays text (smaller, selectable, readable by tests); fixed ids make the same chart the same SVG.
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "sfq", "font.size": 9})
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure(
    rows: int = 1, height: float = HEIGHT_IN, ratios: Sequence[float] | None = None, width: float = WIDTH_IN
) -> Any:
    figure = _new_figure(height, width)
    axes = figure.subplots(
        rows, 1, sharex=rows > 1, gridspec_kw={"height_ratios": ratios} if ratios else None
    )
    for ax in axes if rows > 1 else [axes]:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _svg(figure: Any) -> str:
    """The figure as an <svg> element (text kept as text, no XML prologue) to inline in HTML."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def throughput(minutes: Sequence[Any], completed: Sequence[int], failed: Sequence[int]) -> str:
    """Models finished per minute (stacked steps: completed, then failed on top). Drawn as SVG by hand, not
    with matplotlib: the front page refreshes every few seconds, and matplotlib takes about 140 ms for it."""
    width, height, left, bottom, top = 800, 260, 48, 28, 26
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max([c + f for c, f in zip(completed, failed, strict=True)] or [0])
    step = _tick_step(peak)
    scale_top = max(step * -(-peak // step), step)
    slot = plot_w / max(len(minutes), 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / scale_top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" font-size="11">']
    for tick in range(0, scale_top + 1, step):
        parts.append(f'<path d="M{left} {y(tick):.1f} H{width - 10}" stroke="#d0d7de" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    stacked = [c + f for c, f in zip(completed, failed, strict=True)]
    for colour, bases, tops in (
        (COLOURS[2], [0] * len(completed), completed),
        (COLOURS[1], completed, stacked),
    ):
        # A stepped area, one step a minute (bars without gaps), from its base up to its top and back.
        ups = "".join(f"V{y(v):.1f}H{left + (i + 1) * slot:.1f}" for i, v in enumerate(tops))
        downs = "".join(f"V{y(bases[i]):.1f}H{left + i * slot:.1f}" for i in reversed(range(len(bases))))
        parts.append(f'<path d="M{left} {y(0):.1f}{ups}{downs}Z" fill="{colour}"/>')
    parts.append(f'<path d="M{left} {top} V{top + plot_h} H{width - 10}" stroke="#57606a" fill="none"/>')
    for i, minute in enumerate(minutes):
        if i % 10 == 0 or i == len(minutes) - 1:
            x = left + (i + 0.5) * slot
            parts.append(f'<path d="M{x:.1f} {top + plot_h} v4" stroke="#57606a"/>')
            parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{minute:%H:%M}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})"')
    parts.append(' text-anchor="middle">models / minute</text>')
    for n, (colour, label) in enumerate(((COLOURS[2], "completed"), (COLOURS[1], "failed"))):
        parts.append(f'<rect x="{left + 10 + 90 * n}" y="6" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + 24 + 90 * n}" y="15">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tick_step(peak: int) -> int:
    """A round step giving at most about five gridlines up to `peak`."""
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if peak <= 5 * step:
            return step
    return 10 ** len(str(peak // 5))


def importances(features: Sequence[str], values: Sequence[float], method: str, width: float = 5.0) -> str:
    """Horizontal bars, most important on top (by default half the page's width: beside the metrics)."""
    figure, ax = _figure(height=max(2.0, 0.22 * len(features) + 0.8), width=width)
    ax.barh(list(features)[::-1], list(values)[::-1], color=COLOURS[0])
    ax.set_xlabel(f"importance ({method})")
    return _svg(figure)


def predictions(stamps: Sequence[Any], predicted: Sequence[float], actual: Sequence[float], unit: str) -> str:
    figure, ax = _figure()
    ax.plot(stamps, actual, color="#57606a", linewidth=1, label="actual")
    ax.plot(stamps, predicted, color=COLOURS[0], linewidth=1.2, label="predicted")
    ax.set_ylabel(unit)
    ax.legend(loc="upper left", frameon=False)
    figure.autofmt_xdate()
    return _svg(figure)


def equity(
    stamps: Sequence[Any], strategy: Sequence[float], hold_stamps: Sequence[Any], hold: Sequence[float]
) -> str:
    """The strategy's equity against buy-and-hold, and the strategy's drawdown below it."""
    figure, (top, bottom) = _figure(rows=2, height=3.8, ratios=(3, 1))
    top.plot(stamps, strategy, color=COLOURS[0], linewidth=1.3, label="strategy")
    if hold:
        top.plot(hold_stamps, hold, color="#57606a", linewidth=1, label="buy and hold")
    top.axhline(1.0, color="black", linewidth=0.5)
    top.set_ylabel("equity")
    top.legend(loc="upper left", frameon=False)
    peak, drawdown = 0.0, []
    for value in strategy:
        peak = max(peak, value)
        drawdown.append(value / peak - 1.0)
    bottom.fill_between(stamps, drawdown, 0, color=COLOURS[1], alpha=0.4, linewidth=0)
    bottom.set_ylabel("drawdown")
    figure.autofmt_xdate()
    return _svg(figure)


def metric_by_parameter(metric: str, parameters: dict[str, list[tuple[Any, float]]]) -> str:
    """One panel per parameter, three to a row: the metric of each model against the value it was given
    (values that are not numbers, such as symbols or feature sets, are placed as categories, their labels
    cut to 16 characters)."""
    names = sorted(parameters)
    columns = min(3, max(1, len(names)))
    rows = -(-max(1, len(names)) // columns)
    figure = _new_figure(2.6 * rows)
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        points = parameters[name]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
        if numeric:
            xs = [x for x, _ in points]
        else:
            labels = sorted({str(x) for x, _ in points})
            xs = [labels.index(str(x)) for x, _ in points]
            short = [label if len(label) <= 16 else label[:15] + "…" for label in labels]
            ax.set_xticks(range(len(labels)), short, rotation=30, ha="right")
        ax.scatter(xs, [y for _, y in points], color=COLOURS[0], s=16)
        ax.set_xlabel(name.removeprefix("hyperparameters."))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(metric)
    return _svg(figure)


def best_so_far(objective: str, curve: Sequence[dict[str, Any]]) -> str:
    """A study's best value so far, against trial number (left) and against core-seconds spent (right)."""
    figure = _new_figure(2.8)
    left, right = figure.subplots(1, 2, sharey=True)
    reached = [point for point in curve if point["best"] is not None]
    for ax, key, label in ((left, "trial", "trial number"), (right, "cpu_seconds", "core-seconds")):
        ax.step([p[key] for p in reached], [p["best"] for p in reached], where="post", color=COLOURS[0])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    left.set_ylabel(f"best {objective}")
    return _svg(figure)


def pareto(
    names: Sequence[str], everyone: Sequence[Sequence[float]], front: Sequence[Sequence[float]]
) -> str:
    """Two objectives: every succeeded trial, and the Pareto front (no trial better on both)."""
    figure, ax = _figure(height=3.0, width=5.0)
    ax.scatter([v[0] for v in everyone], [v[1] for v in everyone], color="#8c959f", s=16, label="trials")
    ordered = sorted(front)
    ax.plot([v[0] for v in ordered], [v[1] for v in ordered], "o-", color=COLOURS[1], label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(loc="best", frameon=False)
    return _svg(figure)


def lineage(objective: str, trials: Sequence[dict[str, Any]], edges: Sequence[tuple[int, int]]) -> str:
    """An evolution's family tree: each trial at (number, value), a line from each parent to its child,
    green where the child improved on its parent."""
    figure, ax = _figure(height=3.2)
    value = {t["number"]: t["values"][0] for t in trials if t["values"]}
    for parent, child in edges:
        if parent in value and child in value:
            better = value[child] > value[parent]
            ax.plot(
                [parent, child],
                [value[parent], value[child]],
                color=COLOURS[2] if better else "#d0d7de",
                lw=0.8,
            )
    ax.scatter(list(value), list(value.values()), color=COLOURS[0], s=12, zorder=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective)
    return _svg(figure)


OVERLAID = (*COLOURS, "#bf3989")  # one colour for each of up to 6 compared models


def equities(curves: Sequence[tuple[str, Sequence[Any], Sequence[float]]]) -> str:
    """Several strategies' equity curves overlaid (each a label, its stamps and its equity), and each one's
    drawdown in a panel below, in the same colour (the comparison page: as `equity`, without buy and hold)."""
    figure, (top, bottom) = _figure(rows=2, height=4.2, ratios=(3, 1.4))
    for (label, stamps, values), colour in zip(curves, OVERLAID * 2, strict=False):
        top.plot(stamps, values, color=colour, linewidth=1.2, label=label)
        peak, drawdown = 0.0, []
        for value in values:
            peak = max(peak, value)
            drawdown.append(value / peak - 1.0 if peak > 0 else 0.0)
        bottom.plot(stamps, drawdown, color=colour, linewidth=1)
    top.axhline(1.0, color="black", linewidth=0.5)
    top.set_ylabel("equity")
    top.legend(loc="upper left", frameon=False, ncols=3)
    bottom.set_ylabel("drawdown")
    figure.autofmt_xdate()
    return _svg(figure)
