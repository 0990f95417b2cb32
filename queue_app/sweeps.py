"""A sweep's leaderboard: its models ranked by a held-out metric (`ic`) or a backtest metric
(`backtest.sharpe`), each with its probabilistic Sharpe ratio, and the top one's deflated Sharpe ratio
given how many configurations were tried. Shared by GET /sweeps/{id}, /ui/sweeps/{id} and `sfq sweep-show`."""

from __future__ import annotations

import math
from typing import Any

from queue_app import stats
from queue_app.params import SweepQuery

DEFAULT_PRIORITY = -10  # below single requests (0): one interactive request is not stuck behind a sweep
HELD_OUT = ("directional_accuracy", "directional_base_rate", "ic", "r2", "rmse")
BACKTEST = ("sharpe", "psr", "hit_rate", "total_return", "cagr", "max_drawdown", "n_trades")


def metric(row: dict[str, Any], sort: str) -> float | None:
    """A sweep model's held-out metric (`ic`) or its default backtest's (`backtest.sharpe`), when finite."""
    source, _, name = sort.rpartition(".")
    metrics = (row["backtest"] if source == "backtest" else row["metrics"]) or {}
    return stats.finite(metrics.get(name))


def _per_period(backtest: dict[str, Any]) -> dict[str, Any] | None:
    """The moments the PSR and DSR need, per period (the stored Sharpe is annualised)."""
    needed = ("sharpe", "periods_per_year", "skewness", "kurtosis", "n")
    if not backtest or any(not isinstance(backtest.get(key), int | float) for key in needed):
        return None
    return {
        "sharpe_per_period": backtest["sharpe"] / math.sqrt(backtest["periods_per_year"]),
        "n": int(backtest["n"]),
        "skewness": backtest["skewness"],
        "kurtosis": backtest["kurtosis"],
    }


def leaderboard(models: list[dict[str, Any]], query: SweepQuery) -> dict[str, Any]:
    descending = query.order == "desc"
    ranked = sorted(
        models,
        key=lambda row: (
            metric(row, query.sort) is None,
            -(metric(row, query.sort) or 0) if descending else (metric(row, query.sort) or 0),
            row["position"],
        ),
    )
    rows = [
        {
            "rank": rank,
            "model_id": row["model_id"],
            "status": row["status"],
            "combination": row["combination"],
            "symbol": row["symbol"],
            "algorithm": row["algorithm"],
            "metrics": {name: (row["metrics"] or {}).get(name) for name in HELD_OUT},
            "backtest": {name: (row["backtest"] or {}).get(name) for name in BACKTEST}
            if row["backtest"]
            else None,
        }
        for rank, row in enumerate(ranked[: query.limit], start=1)
    ]
    trials = [moments for row in models if (moments := _per_period(row["backtest"])) is not None]
    top = _per_period(ranked[0]["backtest"]) if ranked else None
    deflated = None
    if top is not None and len(trials) >= 2:
        deflated = {
            "model_id": ranked[0]["model_id"],
            **stats.deflated_sharpe(top, [t["sharpe_per_period"] for t in trials]),
        }
    return {
        "sort": query.sort,
        "order": query.order,
        "rows": rows,
        "top_deflated_sharpe": deflated,
    }


def _cell(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def render(summary: dict[str, Any], progress: dict[str, int], board: dict[str, Any]) -> str:
    """The CLI's view of GET /sweeps/{id}."""
    done = ", ".join(f"{status} {count}" for status, count in sorted(progress.items()))
    lines = [
        f"sweep {summary['id']}: {summary['combinations']} combinations ({summary['created']} new models), "
        f"{done or 'no models'}",
        f"leaderboard by {board['sort']} ({board['order']}):",
        f"{'rank':>4} {'model':>6} {'status':<9} {'dir.acc':>7} {'ic':>7} {'sharpe':>7} {'psr':>5} "
        f"{'return':>8} {'maxdd':>6}  combination",
    ]
    for row in board["rows"]:
        held, test = row["metrics"], row["backtest"] or {}
        combination = " ".join(f"{k}={v}" for k, v in row["combination"].items())
        lines.append(
            f"{row['rank']:>4} {row['model_id']:>6} {row['status']:<9} "
            f"{_cell(held['directional_accuracy'], 3):>7} {_cell(held['ic'], 3):>7} "
            f"{_cell(test.get('sharpe'), 2):>7} {_cell(test.get('psr'), 2):>5} "
            f"{_cell(test.get('total_return'), 4):>8} {_cell(test.get('max_drawdown'), 3):>6}  {combination}"
        )
    deflated = board["top_deflated_sharpe"]
    if deflated:
        lines.append(
            f"top model {deflated['model_id']}: deflated Sharpe ratio "
            f"{_cell(deflated['deflated_sharpe_ratio'], 3)} after {deflated['trials']} backtested "
            f"configurations (luck alone would reach a per-bar Sharpe of "
            f"{deflated['expected_max_sharpe_per_period']:.4f})"
        )
    return "\n".join(lines)
