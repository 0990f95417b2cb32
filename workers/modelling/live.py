"""A model's live track record: its forecasts, made on each new bar by the stored model, scored against
their realised values and paper-traded, with the very functions its held-out window was scored and
backtested with (`training.score`, `backtest.backtest`: the default strategy, long_short with default
parameters, trading the label), and whether its live Sharpe has decayed below the backtest's (`decay`).
Pure computation, like training; the daemon loads and stores."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from queue_app import stats
from workers.modelling.backtest import DEFAULT_STRATEGY, BacktestError, backtest, periods_per_year
from workers.modelling.training import TRANSFORMS, label, score

MIN_DECAY_BARS = 10  # fewer paper-traded bars than this: no verdict, the Sharpe's error is too wide


def decay(
    paper_trading: dict[str, Any] | None, backtest_metrics: dict[str, Any] | None, per_year: float
) -> dict[str, Any]:
    """Whether the live Sharpe has fallen below the backtest's by more than its standard error: decayed
    when live_sharpe < backtest_sharpe - standard_error. Both Sharpe ratios are the backtest engine's
    (`performance`: annualised, arithmetic, risk-free 0) of the same strategy on the same timeframe and
    calendar; the standard error is the live Sharpe's over its n paper-traded bars: that of the
    per-period Sharpe with the live returns' skewness and kurtosis (`stats.sharpe_standard_error`),
    times sqrt(periods per year). `decayed` is None, with the reason, below MIN_DECAY_BARS bars or when a
    figure is missing."""
    live = paper_trading or {}
    verdict: dict[str, Any] = {
        "live_sharpe": live.get("sharpe"),
        "backtest_sharpe": (backtest_metrics or {}).get("sharpe"),
        "standard_error": None,
        "n": live.get("n", 0),
        "min_n": MIN_DECAY_BARS,
        "decayed": None,
        "reason": None,
    }
    moments = stats.per_period({**live, "periods_per_year": per_year})
    error = moments and stats.sharpe_standard_error(
        moments["sharpe_per_period"], moments["n"], moments["skewness"], moments["kurtosis"]
    )
    if error is not None:
        verdict["standard_error"] = error * math.sqrt(per_year)
    if verdict["n"] < MIN_DECAY_BARS:
        verdict["reason"] = f"insufficient: {verdict['n']} of the {MIN_DECAY_BARS} paper-traded bars needed"
    elif verdict["backtest_sharpe"] is None:
        verdict["reason"] = "no backtest Sharpe (no completed default backtest, or its returns never varied)"
    elif verdict["live_sharpe"] is None:
        verdict["reason"] = "no live Sharpe (the paper trading's returns never varied)"
    elif verdict["standard_error"] is None:
        verdict["reason"] = "the live Sharpe's standard error is undefined for these returns"
    else:
        verdict["decayed"] = verdict["live_sharpe"] < verdict["backtest_sharpe"] - verdict["standard_error"]
    return verdict


def track_record(
    spec: dict[str, Any],
    forecasts: pd.DataFrame,
    bars: pd.DataFrame,
    calendar: str = "equity",
    backtest_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`forecasts`: index as_of (the signal bar), columns `prediction` and `realised` (NaN until its bar
    arrived); `bars`: the symbol's bars from the first as_of on, every one there is (the model's data_end
    does not apply: these bars came after it). Returns {forecasts, realised, metrics, equity_curve}:
    metrics holds `score`'s figures over the realised forecasts (directional_accuracy, ic, rmse, ..., n),
    `paper_trading`, the backtest's metrics (None before a trade closed), whose equity curve it is, and
    `decay` against `backtest_metrics`, the model's default backtest (None when it has none yet)."""
    realised = forecasts.dropna(subset=["realised"])
    metrics: dict[str, Any] = {"n": len(realised)}
    if len(realised):
        transform = TRANSFORMS[spec["target_transform"]]
        entry = label(bars, spec)[1].reindex(realised.index).to_numpy(dtype=float)  # the entry closes
        actual, predicted = (
            realised["realised"].to_numpy(dtype=float),
            realised["prediction"].to_numpy(dtype=float),
        )
        metrics |= score(
            actual, predicted, transform.change(actual, entry), transform.change(predicted, entry)
        )
    equity_curve = None
    metrics["paper_trading"] = None
    predictions = forecasts[["prediction"]].rename(columns={"prediction": "predicted"})
    try:
        traded = backtest(predictions, bars, {**spec, "data_end": None}, DEFAULT_STRATEGY, None, calendar)
    except BacktestError:  # no forecast whose exit bar arrived yet
        pass
    else:
        metrics["paper_trading"] = traded.metrics
        equity_curve = traded.equity_curve
    per_year = periods_per_year(spec["timeframe"], calendar)
    metrics["decay"] = decay(metrics["paper_trading"], backtest_metrics, per_year)
    return {
        "forecasts": len(forecasts),
        "realised": len(realised),
        "metrics": metrics,
        "equity_curve": equity_curve,
    }
