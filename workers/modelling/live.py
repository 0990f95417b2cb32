"""A model's live track record: its forecasts, made on each new bar by the stored model, scored against
their realised values and paper-traded, with the very functions its held-out window was scored and
backtested with (`training.score`, `backtest.backtest`: the default strategy, long_short with default
parameters, trading the label). Pure computation, like training; the daemon loads and stores."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workers.modelling.backtest import DEFAULT_STRATEGY, BacktestError, backtest
from workers.modelling.training import TRANSFORMS, label, score


def track_record(
    spec: dict[str, Any], forecasts: pd.DataFrame, bars: pd.DataFrame, calendar: str = "equity"
) -> dict[str, Any]:
    """`forecasts`: index as_of (the signal bar), columns `prediction` and `realised` (NaN until its bar
    arrived); `bars`: the symbol's bars from the first as_of on, every one there is (the model's data_end
    does not apply: these bars came after it). Returns {forecasts, realised, metrics, equity_curve}:
    metrics holds `score`'s figures over the realised forecasts (directional_accuracy, ic, rmse, ..., n)
    and `paper_trading`, the backtest's metrics (None before a trade closed), whose equity curve it is."""
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
    return {
        "forecasts": len(forecasts),
        "realised": len(realised),
        "metrics": metrics,
        "equity_curve": equity_curve,
    }
