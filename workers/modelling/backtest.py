"""Backtesting a trained model's held-out predictions: a strategy registry, the trade's timing, and
performance metrics annualised from the bars' timeframe.

In Python the concept is a backtest; the database stores one as a "simulation", the old service's
name, which clients depend on: the table simulation_history, POST /simulate, GET /simulations/{id},
the sfq_*_simulation functions, the `simulate_model` task and its `simulation_id`.

Pure computation on DataFrames, no database, like training. The strategies share one parameter
declaration, in the contract format the database validates hyperparameters and regimes with;
`python -m workers.modelling.contract` exports it to `sfq_strategies`, and `validate_params` checks the same
declaration here, so the engine is safe without the database too.

Timing, without lookahead, and trading what was predicted: the prediction made at the close of bar t
is known then; its position is entered at the close of t + execution_lag (default 1: never at the price
it was computed from) and exits at target_col of bar t + execution_lag + horizon, the interval the
model's label measures (`training.label`); `backtest` states the details.
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
from workers.modelling.training import TRANSFORMS, execution_lag

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
        "change / `scale` up to `cap` (proportional); entered execution_lag closes after the signal, held "
        "horizon bars (1/horizon sleeves)",
        0.0,
    ),
    Strategy(
        "long_short",
        "long or short on the sign of the predicted change from the close when |change| exceeds "
        "`threshold`, else flat; position in [-cap, cap]; entered execution_lag closes after the signal, "
        "held horizon bars (1/horizon sleeves)",
        -1.0,
    ),
)

# The backtest every trained model gets, with default parameters (sql/schema/simulations.sql's
# sfq_request_simulation), and the one its live forecasts are paper-traded with (live.py).
DEFAULT_STRATEGY = "long_short"


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


# The timeframe syntax; the database checks requests with this very regex (sfq_timeframe_pattern()).
TIMEFRAME = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w|mo)$")
SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Calendar:
    """When a symbol trades, for annualisation: `days` sessions a year of `session_seconds` each, and
    `weeks` trading weeks."""

    name: str
    description: str
    days: float
    session_seconds: int
    weeks: float

    def periods_per_year(self, count: int, unit: str) -> float:
        """Bars of `count` `unit`s in a year: intraday, the bars a session holds (a session of 6.5 hours
        has 7 hourly bars, the last one short) times the sessions; daily and longer, by the calendar."""
        if unit in SECONDS:
            return self.days * math.ceil(self.session_seconds / (count * SECONDS[unit]))
        per_unit = {"d": self.days, "w": self.weeks, "mo": 12}[unit]
        return per_unit / count


# A symbol's calendar (symbol_calendars; equity when none is recorded). The table's CHECK lists the names.
CALENDARS: dict[str, Calendar] = by_name(
    Calendar("equity", "252 sessions a year of 6.5 hours (NYSE, 09:30-16:00)", 252, 23_400, 52),
    Calendar(
        "24x7", "around the clock every day: 365.25 days of 24 hours (crypto)", 365.25, 86_400, 365.25 / 7
    ),
)


def periods_per_year(timeframe: str, calendar: str = "equity") -> float:
    """Bars per year of a timeframe such as "15m", "4h", "1d" or "1mo" on a calendar."""
    if not (match := TIMEFRAME.fullmatch(timeframe)):
        raise BacktestError(f"timeframe: {timeframe!r} is not a timeframe such as 1d, 1h or 5m")
    if calendar not in CALENDARS:
        raise BacktestError(f"calendar: {calendar!r} is not one of {', '.join(CALENDARS)}")
    count, unit = match.groups()
    return CALENDARS[calendar].periods_per_year(int(count), unit)


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


def _sleeves(signals: np.ndarray, horizon: int, n_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """The position held over each bar and the part of it that exits at that bar's end, when signal k's
    position is held as a 1/horizon sleeve over bars k .. k + horizon - 1 (bar i: from the entry close
    of signal i to the next close)."""
    held = np.convolve(signals, np.ones(horizon))[:n_bars] / horizon
    exiting = np.concatenate([np.zeros(horizon - 1), signals])[:n_bars] / horizon
    return held, exiting


def backtest(
    predictions: pd.DataFrame,
    bars: pd.DataFrame,
    spec: dict[str, Any],
    strategy: str,
    params: dict[str, Any] | None = None,
    calendar: str = "equity",
) -> BacktestResult:
    """Backtest a model's held-out `predictions` (index ts, column `predicted`: made at the close of bar
    t, in the target transform's units) on its symbol's `bars`, trading exactly the return the model
    predicted (`training.label`).

    Signal at the close of t: the predicted change (`TRANSFORMS[...].change`: the prediction itself, or
    prediction - close at t for a `raw` target), in the target's units, which are also those of
    `threshold` and `scale`. Entry at the close of t + L (L = execution_lag), exit at target_col of bar
    t + L + h (h = horizon): the close, or for an open, high or low target that price within the bar,
    an idealised fill. Each signal's position is a 1/h sleeve of equity held for its h bars, so h
    sleeves overlap (one, of full size, when h = 1); each bar every live sleeve earns the close-to-close
    return, the one exiting earns up to its exit price instead, and a sleeve's return compounds to
    exactly its label. Costs: cost_bps of |position change| at each close (exits and entries at one
    close net out) and of each exit within a bar; the first entry and the last exit included. A bar
    without a prediction is flat; predictions whose exit bar is past the bars (up to the spec's
    data_end) are not traded. Buy-and-hold, without costs, covers the same bars: from the first entry's
    close to the last exit's bar.

    metrics: the strategy's `performance` (win rate over bars with a position); n_trades (position
    changes); hit_rate (the share of traded signals whose position earned more than 0 before costs:
    the backtest's directional accuracy); exposure (mean |position|); turnover (mean |position change|
    per bar x periods per year: equity traded per year); buy_and_hold (its `performance`);
    excess_return and excess_cagr (the strategy's minus buy-and-hold's). Annualised on the symbol's
    `calendar` (CALENDARS).
    """
    if strategy not in STRATEGIES:
        raise BacktestError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    chosen = validate_params(params or {})
    per_year = periods_per_year(spec["timeframe"], calendar)
    bars = _until(bars, spec.get("data_end"))
    if predictions.empty:
        raise BacktestError("no predictions to backtest")
    rows = bars.index.get_indexer(predictions.index)
    if (missing := rows < 0).any():
        raise BacktestError(f"predictions at {predictions.index[missing][0]} have no bar to trade against")
    lag, horizon, target_col = execution_lag(spec), spec["horizon"], spec.get("target_col", "close")
    close = bars["close"].to_numpy(dtype=float)
    exit_price = bars[target_col].to_numpy(dtype=float)
    first, last = rows.min(), min(rows.max(), len(close) - 1 - lag - horizon)
    if last < first:
        raise BacktestError(
            f"no bar to trade on: the first prediction ({bars.index[first]}) enters at the close of bar "
            f"t + {lag} and exits at bar t + {lag + horizon}, past the last bar ({bars.index[-1]})"
        )
    change = np.full(len(close), np.nan)
    predicted = predictions["predicted"].to_numpy(dtype=float)
    change[rows] = TRANSFORMS[spec["target_transform"]].change(predicted, close[rows])
    signals = STRATEGIES[strategy].positions(change[first : last + 1], chosen)

    start, end = first + lag, last + lag + horizon  # the first entry's close, the last exit's bar
    n_bars = end - start
    held, exiting = _sleeves(signals, horizon, n_bars)
    market = close[start + 1 : end + 1] / close[start:end] - 1.0
    exit_gap = (exit_price[start + 1 : end + 1] - close[start + 1 : end + 1]) / close[start:end]
    within_bar = exiting if target_col != "close" else np.zeros(n_bars)  # exits before the close
    carried = held - within_bar  # what is still held at each bar's close, before that close's trades
    traded = np.abs(held - np.concatenate([[0.0], carried[:-1]])) + np.abs(within_bar)
    traded[-1] += abs(carried[-1])  # the last exit at the close
    returns = held * market + exiting * exit_gap - chosen["cost_bps"] * BASIS_POINT * traded

    entry, exit_ = close[start : last - first + start + 1], exit_price[start + horizon : end + 1]
    earned = signals * (exit_ / entry - 1.0)
    metrics = performance(returns, per_year, held=(held != 0) | (exiting != 0))
    hold = performance(market, per_year)
    metrics |= {
        "n_trades": int(np.count_nonzero(traded)),
        "hit_rate": finite(np.mean(earned[signals != 0] > 0)) if (signals != 0).any() else None,
        "exposure": finite(np.mean(np.abs(held))),
        "turnover": finite(np.mean(traded) * per_year),
        "buy_and_hold": hold,
        "excess_return": _excess(metrics["total_return"], hold["total_return"]),
        "excess_cagr": _excess(metrics["cagr"], hold["cagr"]),
    }
    stamps = bars.index[start : end + 1]
    equity = np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    return BacktestResult(
        metrics=metrics,
        equity_curve=[[ts.isoformat(), float(value)] for ts, value in zip(stamps, equity, strict=True)],
        period_start=stamps[0].to_pydatetime(),
        period_end=stamps[-1].to_pydatetime(),
        params=chosen,
    )
