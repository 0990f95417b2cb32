"""Statistics shared by the backtest engine, the leaderboards and the live records: the standard error
of a Sharpe ratio, the probabilistic Sharpe ratio (PSR) of one backtest and the deflated Sharpe ratio
(DSR) of the best of many (Bailey and Lopez de Prado), and `finite`, what a stored metric may be.
Standard library only: the API computes the DSR at query time from each backtest's stored moments, the
workers the PSR when they backtest and the live decay flag (workers/modelling/live.py)."""

from __future__ import annotations

import math
import numbers
from statistics import NormalDist, fmean
from typing import Any

EULER_GAMMA = 0.5772156649015329
NORMAL = NormalDist()


def finite(value: Any) -> float | None:
    """A number as a float when it is one and finite; None otherwise (NaN, infinities, None, text, a bool:
    JSON has no NaN, and metrics imported from the old service may hold anything)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def per_period(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """A backtest's moments per period, as the PSR, DSR and standard error take them (its stored Sharpe is
    annualised: divided by sqrt(periods_per_year)); None when one of them is missing."""
    needed = ("sharpe", "periods_per_year", "skewness", "kurtosis", "n")
    if not metrics or any(finite(metrics.get(key)) is None for key in needed):
        return None
    return {
        "sharpe_per_period": metrics["sharpe"] / math.sqrt(metrics["periods_per_year"]),
        "n": int(metrics["n"]),
        "skewness": metrics["skewness"],
        "kurtosis": metrics["kurtosis"],
    }


def sharpe_standard_error(sharpe: float, n: int, skewness: float, kurtosis: float) -> float | None:
    """The standard error of a per-period Sharpe ratio estimated from `n` returns with their skewness and
    (non-excess) kurtosis: sqrt((1 - skewness x SR + (kurtosis - 1) / 4 x SR^2) / (n - 1)) (Mertens 2002,
    as Bailey and Lopez de Prado 2012 use it); None when n < 2 or the bracket is not positive."""
    if n < 2:
        return None
    spread = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if spread <= 0:
        return None
    return math.sqrt(spread / (n - 1))


def probabilistic_sharpe(
    sharpe: float, benchmark: float, n: int, skewness: float, kurtosis: float
) -> float | None:
    """P(true Sharpe > benchmark) given the estimate from `n` returns with their skewness and (non-excess)
    kurtosis; per-period Sharpe ratios, not annualised (Bailey and Lopez de Prado 2012, eq. 4)."""
    error = sharpe_standard_error(sharpe, n, skewness, kurtosis)
    return None if error is None else NORMAL.cdf((sharpe - benchmark) / error)


def expected_max_sharpe(sharpes: list[float], trials: int | None = None) -> float:
    """The Sharpe ratio the best of `trials` (default: len(sharpes)) would reach by luck alone, if every
    true Sharpe were 0, with the spread of `sharpes` (the False Strategy Theorem: Bailey, Borwein, Lopez
    de Prado and Zhu 2014)."""
    trials = len(sharpes) if trials is None else trials
    if trials < 2 or len(sharpes) < 2:
        return 0.0
    mean = fmean(sharpes)
    spread = math.sqrt(sum((s - mean) ** 2 for s in sharpes) / (len(sharpes) - 1))
    return spread * (
        (1 - EULER_GAMMA) * NORMAL.inv_cdf(1 - 1 / trials)
        + EULER_GAMMA * NORMAL.inv_cdf(1 - 1 / (trials * math.e))
    )


def deflated_sharpe(best: dict, sharpes: list[float], trials: int | None = None) -> dict:
    """DSR of the best trial: its PSR against the luck benchmark of `trials` trials (default: one per
    Sharpe) whose per-period Sharpe ratios spread as `sharpes` do."""
    trials = len(sharpes) if trials is None else trials
    benchmark = expected_max_sharpe(sharpes, trials)
    return {
        "trials": trials,
        "expected_max_sharpe_per_period": benchmark,
        "deflated_sharpe_ratio": probabilistic_sharpe(
            best["sharpe_per_period"], benchmark, best["n"], best["skewness"], best["kurtosis"]
        ),
    }
