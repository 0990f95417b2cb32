"""A sweep's leaderboard: its models ranked by a held-out metric (`ic`) or a backtest metric
(`backtest.sharpe`), each with its probabilistic Sharpe ratio; the best model by Sharpe with its deflated
Sharpe ratio given every configuration tried; and the probability of backtest overfitting of choosing
it. Shared by GET /sweeps/{id}, /ui/sweeps/{id} and `sfq sweep-show`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from queue_app import stats
from queue_app.overfitting import DEFAULT_PARTITIONS, probability_of_overfitting
from queue_app.params import SweepQuery

DEFAULT_PRIORITY = -10  # below single requests (0): one interactive request is not stuck behind a sweep
HELD_OUT = ("directional_accuracy", "directional_base_rate", "ic", "r2", "rmse")
BACKTEST = ("sharpe", "psr", "hit_rate", "total_return", "cagr", "max_drawdown", "n_trades")


def metric(row: dict[str, Any], sort: str) -> float | None:
    """A sweep model's held-out metric (`ic`) or its default backtest's (`backtest.sharpe`), when finite."""
    source, _, name = sort.rpartition(".")
    metrics = (row["backtest"] if source == "backtest" else row["metrics"]) or {}
    return stats.finite(metrics.get(name))


def best_by_sharpe(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The deflated Sharpe ratio of the sweep's best model by backtest Sharpe, whatever the leaderboard's
    sort. N (trials) = every configuration of the sweep, finished or not, failed and non-trading ones
    included: each was a chance to find a lucky backtest. The spread of the trials' Sharpe ratios comes
    from the completed backtests, a model that never traded counting as a Sharpe of 0; a configuration
    without a backtest (failed, unfinished) counts in N only."""
    backtested = [(stats.per_period(row["backtest"]), row) for row in models if row["backtest"]]
    sharpes = [moments["sharpe_per_period"] if moments else 0.0 for moments, _ in backtested]
    scored = [(moments, row) for moments, row in backtested if moments]
    if not scored or len(models) < 2:
        return None
    top, row = max(scored, key=lambda pair: (pair[0]["sharpe_per_period"], -pair[1]["position"]))
    return {
        "model_id": row["model_id"],
        "sharpe": row["backtest"]["sharpe"],
        "backtested": len(backtested),
        **stats.deflated_sharpe(top, sharpes, trials=len(models)),
    }


def _returns(curves: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-bar returns of each model's equity curve, on the bars every curve covers (bars x models)."""
    series = {}
    for row in curves:
        stamps, equity = zip(*row["equity_curve"], strict=True)
        series[row["model_id"]] = pd.Series(equity, index=pd.to_datetime(stamps, utc=True)).pct_change()
    return pd.DataFrame(series).dropna()


def overfitting(curves: list[dict[str, Any]], partitions: int = DEFAULT_PARTITIONS) -> dict[str, Any]:
    """The PBO of choosing the sweep's best model by backtest Sharpe (CSCV over the models' per-bar
    backtest returns on the bars they share), or why it cannot be computed yet."""
    if len(curves) < 2:
        return {"pbo": None, "why": f"needs 2 backtested models, has {len(curves)}"}
    returns = _returns(curves)
    try:
        return probability_of_overfitting(returns.to_numpy(), partitions)
    except ValueError as error:
        return {"pbo": None, "why": str(error)}


def leaderboard(
    models: list[dict[str, Any]], query: SweepQuery, curves: list[dict[str, Any]]
) -> dict[str, Any]:
    """The sweep's models ranked by `query`, the best model by Sharpe with its DSR, and the PBO of
    choosing it (`curves`: the default backtests' equity curves, gateway.sweep_equity_curves)."""
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
    return {
        "sort": query.sort,
        "order": query.order,
        "rows": rows,
        "best_by_sharpe": best_by_sharpe(models),
        "overfitting": overfitting(curves),
    }


def summary_lines(board: dict[str, Any]) -> list[str]:
    """The selection's honesty in words: the best model by Sharpe with its DSR, and the PBO."""
    lines = []
    if best := board["best_by_sharpe"]:
        lines.append(
            f"best by Sharpe: model {best['model_id']} (Sharpe {_cell(best['sharpe'], 2)}): deflated Sharpe "
            f"ratio {_cell(best['deflated_sharpe_ratio'], 3)} after {best['trials']} configurations "
            f"({best['backtested']} backtested; luck alone would reach a per-bar Sharpe of "
            f"{best['expected_max_sharpe_per_period']:.4f})"
        )
    fitted = board["overfitting"]
    if fitted["pbo"] is None:
        lines.append(f"probability of backtest overfitting: not computed ({fitted['why']})")
    else:
        lines.append(
            f"probability of backtest overfitting: {fitted['pbo']:.3f} (CSCV, {fitted['strategies']} models "
            f"x {fitted['bars']} bars in {fitted['partitions']} partitions, {fitted['combinations']} splits; "
            f"median logit {fitted['logits']['quantiles']['0.5']:.2f})"
        )
    return lines


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
    lines.extend(summary_lines(board))
    return "\n".join(lines)
