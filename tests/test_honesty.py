"""Honesty of training and backtest together: on random walks with a consistent intraday path,
held-out directional accuracy and the backtest's Sharpe ratio stay where chance puts them, for every way
a model is fitted and evaluated (horizons, CV strategies, context symbols, regimes, grids, walk-forward,
every feature); the same null test fails as soon as a feature peeks into the future (the canaries: the
next close, open or high, two bars ahead), so passing it means something; and series with real structure
(reversals, an AR(1)) show it in both, consistently.

No database: bars are generated here, models trained with workers.modelling.training.train and
backtested with workers.modelling.backtest.backtest.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from workers.modelling import features
from workers.modelling.backtest import backtest, periods_per_year
from workers.modelling.features import DEFAULT_FEATURES, FEATURES, Feature
from workers.modelling.training import train

SEEDS = range(20)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "Ridge": {},
    "RandomForest": {"n_estimators": 20, "min_samples_leaf": 5, "max_depth": 6},
}
TRAIN_WINDOW, TEST_WINDOW = 500, 250
# Warm-up (ma_ratio_200), train, a gap of the label's reach (up to execution_lag + horizon = 6), test, the
# label.
N_BARS = 210 + TRAIN_WINDOW + 6 + TEST_WINDOW + 6
PERIODS = periods_per_year("1d")
NORMAL_MEDIAN_SE = math.sqrt(math.pi / 2)  # the median of m normal draws: sqrt(pi/2) sd / sqrt(m)
ABS_NORMAL_MEDIAN = 0.6745  # the median of |Z| for a standard normal Z
ABS_NORMAL_MEDIAN_SE = 1 / (2 * 2 * 0.3178)  # 1 / (2 f(median)), f = 2 phi(0.6745): the median of m |Z|'s
STANDARD_ERRORS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_process():
    """As in the worker's training process: one BLAS/OpenMP thread."""
    with threadpool_limits(1):
        yield


def random_walk_bars(seed: int) -> pd.DataFrame:
    """Daily bars of a driftless geometric random walk with a consistent intraday path: each bar opens
    at the last close moved by an overnight gap, closes at its open moved by the day's move (gap and
    move i.i.d. normal), and its high and low lie beyond both. So nothing known at the close of t says
    anything about later prices, but a peek at the next open or high *is* information about the next
    close."""
    rng = np.random.default_rng(seed)
    gap, move = rng.normal(0.0, 0.005, N_BARS), rng.normal(0.0, 0.0087, N_BARS)
    open_ = 100.0 * np.exp(np.cumsum(gap + move) - move)
    close = open_ * np.exp(move)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, N_BARS)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, N_BARS)))
    volume = np.round(np.exp(rng.normal(13.0, 0.3, N_BARS)))
    index = pd.date_range("2010-01-04", periods=N_BARS, freq="B", tz="UTC", name="ts")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index)


def make_spec(algorithm: str, extra_features: tuple[str, ...] = (), execution_lag: int = 1) -> dict[str, Any]:
    return {
        "symbol": "WALK",
        "timeframe": "1d",
        "target_col": "close",
        "target_transform": "log_return",
        "horizon": 1,
        "execution_lag": execution_lag,
        "algorithm": algorithm,
        "hyperparameters": ALGORITHMS[algorithm],
        "features": [*DEFAULT_FEATURES, *extra_features],
        "train_window": TRAIN_WINDOW,
        "test_window": TEST_WINDOW,
        "data_end": None,
        "cv_folds": 3,
        "cv_strategy": "expanding",
        "context_symbols": [],
        "alpha_grid": [],
        "l1_ratio_grid": [],
        "regime_configs": [],
    }


# The spec variations the null test runs (each on every seed, with the algorithms named): every way a
# model is fitted, scored and evaluated must stay without skill on a random walk.
WALK_FORWARD = {"kind": "walk_forward", "refit_every": 50, "window": "sliding", "start": None}
CONFIGS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "holdout, h = 1": ({}, ("Ridge", "RandomForest")),
    "every feature": ({"features": list(FEATURES)}, ("Ridge",)),
    "h = 5": ({"horizon": 5}, ("Ridge",)),
    "sliding CV": ({"cv_strategy": "sliding"}, ("Ridge",)),
    "purged CV": ({"cv_strategy": "purged"}, ("Ridge",)),
    "context symbol": ({"context_symbols": ["OTHER"]}, ("Ridge",)),
    "regimes": (
        {
            "regime_configs": [
                {"kind": "volatility", "mode": "feature", "min_history": 50},
                {"kind": "trend", "mode": "split"},
            ]
        },
        ("Ridge",),
    ),
    "alpha grid": ({"alpha_grid": [0.1, 10.0, 1000.0]}, ("Ridge",)),
    "walk-forward": ({"evaluation": WALK_FORWARD}, ("Ridge",)),
}


@dataclass
class Outcome:
    accuracies: list[float]  # held-out directional accuracy, one per model
    sharpes: list[float]  # annualised Sharpe of its long_short backtest
    n_scored: int  # held-out rows per model
    n_returns: int  # backtest returns per model
    horizon: int  # the label's horizon: overlapping labels count n / horizon independent rows


def train_and_backtest(
    extra_features: tuple[str, ...] = (),
    execution_lag: int = 1,
    config: str = "holdout, h = 1",
) -> Outcome:
    """The config's algorithms on every seed's random walk (a context symbol: another seed's walk), each
    backtested long/short without costs (costs would pull the Sharpe below zero; the question here is
    skill)."""
    overrides, algorithms = CONFIGS[config]
    accuracies, sharpes, n_scored, n_returns = [], [], set(), set()
    for seed in SEEDS:
        bars = random_walk_bars(seed)
        context = {"OTHER": random_walk_bars(seed + 1000)}
        for algorithm in algorithms:
            spec = {**make_spec(algorithm, extra_features, execution_lag), **overrides}
            if overrides.get("alpha_grid"):
                spec["hyperparameters"] = {}
            result = train(spec, bars, context)
            rows = result.series or pd.DataFrame(result.predictions).to_dict("list")
            predictions = pd.DataFrame({"predicted": rows["predicted"]}, index=pd.DatetimeIndex(rows["ts"]))
            backtested = backtest(predictions, bars, spec, "long_short", {"cost_bps": 0})
            accuracies.append(result.metrics["directional_accuracy"])
            sharpes.append(backtested.metrics["sharpe"])
            n_scored.add(result.metrics["n"])
            n_returns.add(backtested.metrics["n"])
    (scored,), (returns,) = n_scored, n_returns
    return Outcome(accuracies, sharpes, scored, returns, overrides.get("horizon", 1))


def null_test_failures(outcome: Outcome) -> dict[str, float]:
    """The checks a model family without skill passes, by name, with the median that failed.

    Each model's held-out accuracy on n rows of a random walk is binomial around 0.5 with standard
    error 0.5 / sqrt(n); its annualised Sharpe over n returns is about normal around 0 with standard
    error sqrt((1 + SR^2 / 2) / n) x sqrt(periods per year), SR = 0 under the null (Lo 2002). With a
    horizon h > 1 neighbouring labels and sleeves overlap, so n / h rows count as independent. Medians
    are over m = the number of random walks, not of models: the models trained on one walk score the
    same held-out returns and are correlated, so counting them as independent would narrow the bands
    too much (at worst they are identical and m is exact). The median of m normal draws has standard
    error sqrt(pi / 2) sd / sqrt(m); the median of m |Z| (Z standard normal) is 0.6745 with standard
    error 1 / (2 f sqrt(m)), f = 2 phi(0.6745) = 0.636 the density of |Z| there. Bands are 4 standard
    errors: a false alarm about once in 16,000 runs per check.
    """
    m = len(SEEDS)
    accuracy_se = 0.5 / math.sqrt(outcome.n_scored / outcome.horizon)
    accuracy_band = STANDARD_ERRORS * NORMAL_MEDIAN_SE * accuracy_se / math.sqrt(m)
    sharpe_se = math.sqrt(PERIODS / (outcome.n_returns / outcome.horizon))
    sharpe_limit = sharpe_se * (ABS_NORMAL_MEDIAN + STANDARD_ERRORS * ABS_NORMAL_MEDIAN_SE / math.sqrt(m))
    accuracy = statistics.median(outcome.accuracies)
    abs_sharpe = statistics.median(abs(sharpe) for sharpe in outcome.sharpes)
    failures = {}
    if abs(accuracy - 0.5) > accuracy_band:
        failures["directional_accuracy"] = accuracy
    if abs_sharpe > sharpe_limit:
        failures["abs_sharpe"] = abs_sharpe
    return failures


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_walks_show_no_skill_in_training_nor_in_the_backtest(config):
    outcome = train_and_backtest(config=config)
    assert len(outcome.accuracies) == len(SEEDS) * len(CONFIGS[config][1])
    assert outcome.n_scored > 200 and outcome.n_returns >= outcome.n_scored
    assert null_test_failures(outcome) == {}, (outcome.accuracies, outcome.sharpes)


def _peek(column: str, bars_ahead: int):
    """The log change from the close at t to `column` at t + bars_ahead: known only bars_ahead later."""
    return lambda bars: np.log(bars[column].shift(-bars_ahead) / bars["close"])


# The canaries: features that peek into the future, registered only inside the test, each with the
# execution_lag under which it is tested. With a lag of 1 the label runs from the close of t + 1, so
# bar t + 1 itself (its open, its high) says nothing about it on a random walk: peeks at it are tested
# with a lag of 0, whose label is bar t + 1's own move. The backtest trades the label, so a peek at it
# shows in the backtest too.
LEAKS = {
    # The return over the next two bars holds the whole default label (close[t+2] / close[t+1]).
    "two_bars_ahead": (_peek("close", 2), 1),
    # With execution_lag 0 the label is close[t+1] / close[t]: the next close is the label itself, the
    # next open its overnight part, the next high its best part.
    "next_close": (_peek("close", 1), 0),
    "next_open": (_peek("open", 1), 0),
    "next_high": (_peek("high", 1), 0),
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_the_null_test_catches_a_feature_that_peeks_into_the_future(monkeypatch, leak):
    compute, execution_lag = LEAKS[leak]
    monkeypatch.setitem(features.FEATURES, leak, Feature(leak, "peeks into the future", compute, False, 0))
    outcome = train_and_backtest((leak,), execution_lag)
    failures = null_test_failures(outcome)
    assert set(failures) == {"directional_accuracy", "abs_sharpe"}, (
        failures,
        outcome.accuracies,
        outcome.sharpes,
    )
    assert statistics.median(outcome.accuracies) > 0.6  # far above the band (about 0.5 +- 0.035)
    assert statistics.median(outcome.sharpes) > 5  # far above the band (|Sharpe| below about 1.4)


def bars_of_returns(log_returns: np.ndarray) -> pd.DataFrame:
    """Daily bars whose closes have these log returns (open, high, low at the close; volume noise)."""
    close = 100.0 * np.exp(np.cumsum(log_returns))
    volume = np.round(np.exp(np.random.default_rng(7).normal(13.0, 0.3, len(close))))
    index = pd.date_range("2010-01-04", periods=len(close), freq="B", tz="UTC", name="ts")
    return pd.DataFrame({"open": close, "high": close, "low": close, "close": close, "volume": volume}, index)


def held_out_and_backtest(bars: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = make_spec("Ridge")
    result = train(spec, bars)
    predictions = pd.DataFrame(result.predictions).set_index("ts")[["predicted"]]
    return result.metrics, backtest(predictions, bars, spec, "long_short", {"cost_bps": 0}).metrics


def test_a_series_that_reverses_every_bar_is_predicted_and_its_backtest_shows_it():
    """Every bar reverses the last one's move, so the label (close[t+2] / close[t+1], the same sign as
    bar t's return) is known from ret_1: directional accuracy near 1 (Ridge on all the default features
    errs on a few bars), and the backtest, which trades that very label, earns nearly every move (under
    the replaced convention it reported a Sharpe of -47)."""
    magnitudes = np.abs(np.random.default_rng(5).normal(0.0, 0.01, N_BARS))
    metrics, backtested = held_out_and_backtest(bars_of_returns(magnitudes * (-1.0) ** np.arange(N_BARS)))
    assert metrics["directional_accuracy"] > 0.95
    assert backtested["hit_rate"] == metrics["directional_accuracy"] and backtested["sharpe"] > 10


def test_positive_autocorrelation_gives_a_positive_sharpe_consistent_with_the_accuracy():
    """An AR(1) of log returns with phi = 0.7: the label two bars ahead has correlation phi^2 = 0.49 with
    bar t's return, so a linear model's sign is right about 0.5 + arcsin(0.49) / pi = 0.66 of the time.
    The backtest's hit rate is the model's held-out directional accuracy (the same signs on the same
    returns), and its Sharpe is positive by far more than its standard error (about 1 a year here)."""
    noise = np.random.default_rng(7).normal(0.0, 0.01, N_BARS)
    returns = np.zeros(N_BARS)
    for t in range(1, N_BARS):
        returns[t] = 0.7 * returns[t - 1] + noise[t]
    metrics, backtested = held_out_and_backtest(bars_of_returns(returns))
    assert backtested["hit_rate"] == pytest.approx(metrics["directional_accuracy"])
    assert 0.6 < metrics["directional_accuracy"] < 0.72
    sharpe_se = math.sqrt(PERIODS / backtested["n"])
    assert backtested["sharpe"] > STANDARD_ERRORS * sharpe_se
