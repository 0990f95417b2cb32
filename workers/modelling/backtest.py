"""Backtesting a trained model's held-out predictions: a strategy registry, the trade's timing, and
performance metrics annualised from the bars' timeframe.

In Python the concept is a backtest; the database stores one as a "simulation", the old service's
name, which clients depend on: the table simulation_history, POST /simulate, GET /simulations/{id},
the sfq_*_simulation functions, the `simulate_model` task and its `simulation_id`.

Pure computation on DataFrames, no database, like training. The strategies share one parameter
declaration, in the contract format the database validates hyperparameters and regimes with;
`python -m workers.modelling.contract` exports it to `sfq_strategies`, and `validate_params` checks the same
declaration here, so the engine is safe without the database too.

Timing, without lookahead: the prediction made at the close of bar t is known then; the position it
implies is entered at the close of the next bar (t + 1) and earns the close-to-close return from t + 1
to t + 2. One bar of delay, so a signal is never traded at the price it was computed from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from queue_app.errors import Rejected
from queue_app.stats import finite, probabilistic_sharpe
from workers.modelling.registry import by_name
from workers.modelling.training import TRANSFORMS

BASIS_POINT = 1e-4
LARGEST_NUMBER = 1e15  # as the database's rules: beyond it a float64 no longer holds integers exactly


class BacktestError(Rejected):
    """A backtest that cannot run as asked (unknown strategy, bad parameter, no bar to trade on); the
    message names the culprit."""


def _number(default: float, low: float, high: float | None = None, low_open: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {"type": "number", "min": low, "min_open": low_open}
    if high is not None:
        rule.update(max=high, max_open=False)
    return {"default": default, "rules": [rule]}


# A position from the predicted change (in the target transform's units) and the settings, before the
# strategy's bounds: full size on the sign, or in proportion to the change.
SIZINGS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "fixed": lambda change, settings: np.sign(change) * settings["cap"],
    "proportional": lambda change, settings: change / settings["scale"],
}

# Every strategy's parameters: {param: {"default", "rules"}}, as hyperparameters and regimes declare theirs.
PARAMETERS: dict[str, dict[str, Any]] = {
    "threshold": _number(0.0, 0),  # enter only when |predicted change| > threshold (the target's units)
    "sizing": {"default": "fixed", "rules": [{"type": "string", "enum": sorted(SIZINGS)}]},
    "scale": _number(0.01, 0, low_open=True),  # proportional: the predicted change that takes a full cap
    "cap": _number(1.0, 0, 1, low_open=True),  # the largest |position|, as a fraction of equity
    "cost_bps": _number(5.0, 0, 1000),  # per unit of |position change|, charged when the position changes
}


@dataclass(frozen=True)
class Strategy:
    """A trading rule on the sign of the predicted change; strategies differ only by how low a position
    may go."""

    name: str
    description: str
    floor: float  # the lowest position, as a multiple of cap: 0 long only, -1 long or short

    @property
    def declarations(self) -> dict[str, dict[str, Any]]:
        return PARAMETERS

    def positions(self, change: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
        """Position per bar: flat unless |change| > threshold (a bar without a prediction, NaN, is flat)."""
        cap = settings["cap"]
        sized = np.clip(SIZINGS[settings["sizing"]](change, settings), self.floor * cap, cap)
        return np.where(np.abs(change) > settings["threshold"], sized, 0.0)


STRATEGIES: dict[str, Strategy] = by_name(
    Strategy(
        "long_only",
        "long when the predicted change from the close exceeds `threshold`, else flat; `cap` (fixed) or "
        "change / `scale` up to `cap` (proportional); entered at the next bar's close, held one bar",
        0.0,
    ),
    Strategy(
        "long_short",
        "long or short on the sign of the predicted change from the close when |change| exceeds "
        "`threshold`, else flat; position in [-cap, cap]; entered at the next bar's close, held one bar",
        -1.0,
    ),
)


def default_params() -> dict[str, Any]:
    return {name: declared["default"] for name, declared in PARAMETERS.items()}


def _number_problem(rule: dict[str, Any], value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= LARGEST_NUMBER:
        return f"must be a finite number (at most {LARGEST_NUMBER:g} in size), got {value!r}"
    if "min" in rule and (value < rule["min"] or (rule["min_open"] and value == rule["min"])):
        return f"must be {'>' if rule['min_open'] else '>='} {rule['min']}, got {value!r}"
    if "max" in rule and (value > rule["max"] or (rule["max_open"] and value == rule["max"])):
        return f"must be {'<' if rule['max_open'] else '<='} {rule['max']}, got {value!r}"
    return None


def _string_problem(rule: dict[str, Any], value: Any) -> str | None:
    if not isinstance(value, str) or value not in rule["enum"]:
        return f"must be one of {', '.join(rule['enum'])}, got {value!r}"
    return None


# Rule type: (what is wrong with a value, None when it fits; its canonical form, as the database's).
RULES: dict[str, tuple[Callable[[dict[str, Any], Any], str | None], Callable[[Any], Any]]] = {
    "number": (_number_problem, float),
    "string": (_string_problem, str),
}


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter, checked against its declaration, its default when absent; numbers as floats
    (5 and 5.0 alike, as the database canonicalises them)."""
    if unknown := sorted(set(params) - set(PARAMETERS)):
        raise BacktestError(f"{unknown[0]}: unknown parameter; valid: {', '.join(sorted(PARAMETERS))}")
    complete = default_params()
    for name, value in params.items():
        problems = []
        for rule in PARAMETERS[name]["rules"]:
            problem, canonical = RULES[rule["type"]]
            if (found := problem(rule, value)) is None:
                complete[name] = canonical(value)
                break
            problems.append(found)
        else:
            raise BacktestError(f"{name}: {' or '.join(problems)}")
    return complete


# Bars of one unit in a year, on an equity market's calendar: 252 sessions of 6.5 hours.
PERIODS_PER_YEAR: dict[str, float] = {
    "s": 252 * 6.5 * 3600,
    "m": 252 * 6.5 * 60,
    "h": 252 * 6.5,
    "d": 252,
    "w": 52,
    "mo": 12,
}
# The timeframe syntax; the database checks requests with this very regex (sfq_timeframe_pattern()).
TIMEFRAME = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w|mo)$")


def periods_per_year(timeframe: str) -> float:
    """Bars per year of a timeframe such as "15m", "4h", "1d" or "1mo"."""
    if not (match := TIMEFRAME.fullmatch(timeframe)):
        raise BacktestError(f"timeframe: {timeframe!r} is not a timeframe such as 1d, 1h or 5m")
    count, unit = match.groups()
    return PERIODS_PER_YEAR[unit] / int(count)


def performance(
    returns: np.ndarray, periods_per_year: float, held: np.ndarray | None = None
) -> dict[str, Any]:
    """Metrics of per-period simple returns, JSON-safe (None where undefined, never NaN or inf).

    Sharpe is arithmetic with a risk-free rate of 0: mean / std (ddof=1) x sqrt(periods_per_year);
    tools that compound returns or subtract a risk-free rate report other numbers. Sortino divides the
    mean by the downside deviation sqrt(mean(min(r, 0)^2)). Zero variance gives no Sharpe (None, not inf).
    Max drawdown is the largest fall of the compounded equity from its running peak, as a positive
    fraction of the peak. Skewness and kurtosis use the population moments (scipy's bias=True); the
    kurtosis is the plain (Pearson, non-excess) one, 3 for a normal distribution. `psr` is the
    probabilistic Sharpe ratio (Bailey & Lopez de Prado 2012, `queue_app.stats.probabilistic_sharpe`, the
    one the leaderboards deflate): the probability that the true per-period Sharpe exceeds 0, given n,
    skewness and kurtosis. `win_rate` counts positive returns among the
    `held` bars (those with a position; default all).
    """
    returns = np.asarray(returns, dtype=float)
    n = len(returns)
    if n == 0:
        raise BacktestError("no returns to measure")
    held = np.ones(n, dtype=bool) if held is None else np.asarray(held, dtype=bool)
    equity = np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    with np.errstate(all="ignore"):
        cagr = equity[-1] ** (periods_per_year / n) - 1.0 if equity[-1] > 0 else -1.0
    max_drawdown = float(np.max(1.0 - equity / np.maximum.accumulate(equity)))
    mean = float(np.mean(returns))
    varies = bool(np.ptp(returns) > 0)  # exact: a constant series' std is rounding noise, not risk
    std = float(np.std(returns, ddof=1)) if varies and n > 1 else 0.0
    annual = math.sqrt(periods_per_year)
    downside = math.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    moments = {"skewness": None, "kurtosis": None, "psr": None}
    if std > 0:
        centred = returns - mean
        m2 = np.mean(centred**2)
        skewness, kurtosis = np.mean(centred**3) / m2**1.5, np.mean(centred**4) / m2**2
        psr = probabilistic_sharpe(mean / std, 0.0, n, skewness, kurtosis)
        moments = {"skewness": skewness, "kurtosis": kurtosis, "psr": psr}
    return {
        "n": n,
        "total_return": finite(equity[-1] - 1.0),
        "cagr": finite(cagr),
        "volatility": finite(std * annual) if n > 1 else None,
        "sharpe": finite(mean / std * annual) if std > 0 else None,
        "sortino": finite(mean / downside * annual) if downside > 0 else None,
        "max_drawdown": finite(max_drawdown),
        "calmar": finite(cagr / max_drawdown) if max_drawdown > 0 else None,
        "win_rate": finite(np.mean(returns[held] > 0)) if held.any() else None,
        **{name: finite(value) for name, value in moments.items()},
    }


def _excess(strategy: float | None, benchmark: float | None) -> float | None:
    return None if strategy is None or benchmark is None else finite(strategy - benchmark)


@dataclass
class BacktestResult:
    metrics: dict[str, Any]
    equity_curve: list[list[Any]]  # [[iso ts, equity], ...]: 1.0 at period_start, then after each bar
    period_start: datetime  # the close the first position is entered at
    period_end: datetime  # the close of the last bar whose return counts
    params: dict[str, Any]  # every parameter, defaults filled in


def _until(bars: pd.DataFrame, data_end: Any) -> pd.DataFrame:
    """The bars up to the model's data_end (UTC when naive), so the same model backtests the same
    whatever bars arrived since."""
    if data_end is None:
        return bars
    end = pd.Timestamp(data_end)
    if end.tzinfo is None:
        end = end.tz_localize("UTC")
    if bars.index.tz is None:
        end = end.tz_convert("UTC").tz_localize(None)
    return bars.loc[:end]


def backtest(
    predictions: pd.DataFrame,
    bars: pd.DataFrame,
    spec: dict[str, Any],
    strategy: str,
    params: dict[str, Any] | None = None,
) -> BacktestResult:
    """Backtest a model's held-out `predictions` (index ts, column `predicted`: made at the close of bar
    t for target_col at t + horizon, in the target transform's units) on its symbol's `bars`.

    The signal at t is the predicted change from the close at t (`TRANSFORMS[...].change`: the
    prediction itself, or prediction - close for a `raw` target), in the target's units, which are also
    those of `threshold` and `scale`. Its position is entered at the close of t + 1 and earns
    close[t + 2] / close[t + 1] - 1, less cost_bps of |position change| when the position changes (the
    first entry included; the last position is marked, not closed). The position is decided again at
    every bar whatever the horizon; a bar without a prediction is flat. Predictions whose t + 2 is past
    the bars (up to the spec's data_end) are not traded. Buy-and-hold, without costs, covers exactly the
    same period: from the close of the first entry to the last bar the strategy's returns cover.

    metrics: the strategy's `performance` (win rate over bars with a position); n_trades (position
    changes); exposure (mean |position|); turnover (mean |position change| per bar x periods per year:
    equity traded per year); buy_and_hold (its `performance`); excess_return and excess_cagr (the
    strategy's minus buy-and-hold's).
    """
    if strategy not in STRATEGIES:
        raise BacktestError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    chosen = validate_params(params or {})
    per_year = periods_per_year(spec["timeframe"])
    bars = _until(bars, spec.get("data_end"))
    if predictions.empty:
        raise BacktestError("no predictions to backtest")
    rows = bars.index.get_indexer(predictions.index)
    if (missing := rows < 0).any():
        raise BacktestError(f"predictions at {predictions.index[missing][0]} have no bar to trade against")
    close = bars["close"].to_numpy(dtype=float)
    first, last = rows.min(), min(rows.max(), len(close) - 3)
    if last < first:
        raise BacktestError(
            f"no bar to trade on: the first prediction ({bars.index[first]}) is traded from the close of "
            "the next bar, over the bar after it"
        )
    change = np.full(len(close), np.nan)
    predicted = predictions["predicted"].to_numpy(dtype=float)
    change[rows] = TRANSFORMS[spec["target_transform"]].change(predicted, close[rows])
    position = STRATEGIES[strategy].positions(change[first : last + 1], chosen)
    market = close[first + 2 : last + 3] / close[first + 1 : last + 2] - 1.0  # bar t + 2's return
    traded = np.abs(np.diff(position, prepend=0.0))
    returns = position * market - chosen["cost_bps"] * BASIS_POINT * traded

    metrics = performance(returns, per_year, held=position != 0)
    hold = performance(market, per_year)
    metrics |= {
        "n_trades": int(np.count_nonzero(traded)),
        "exposure": finite(np.mean(np.abs(position))),
        "turnover": finite(np.mean(traded) * per_year),
        "buy_and_hold": hold,
        "excess_return": _excess(metrics["total_return"], hold["total_return"]),
        "excess_cagr": _excess(metrics["cagr"], hold["cagr"]),
    }
    stamps = bars.index[first + 1 : last + 3]
    equity = np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    return BacktestResult(
        metrics=metrics,
        equity_curve=[[ts.isoformat(), float(value)] for ts, value in zip(stamps, equity, strict=True)],
        period_start=stamps[0].to_pydatetime(),
        period_end=stamps[-1].to_pydatetime(),
        params=chosen,
    )
