"""Honesty of training and backtest together: on random walks, held-out directional accuracy and the
backtest's Sharpe ratio stay where chance puts them; and the same null test fails as soon as a feature
peeks into the future (the leakage canary), so passing it means something.

No database: bars are generated here, models trained with workers.modelling.training.train and backtested with
workers.modelling.backtest.backtest.
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
from workers.modelling.features import DEFAULT_FEATURES, Feature
from workers.modelling.training import train

SEEDS = range(20)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "Ridge": {},
    "RandomForest": {"n_estimators": 20, "min_samples_leaf": 5, "max_depth": 6},
}
TRAIN_WINDOW, TEST_WINDOW = 500, 250
# Warm-up (ma_ratio_50), train, a gap of the label's reach (execution_lag + horizon = 2), test, the label.
N_BARS = 60 + TRAIN_WINDOW + 2 + TEST_WINDOW + 2
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
    """Daily bars of a driftless geometric random walk: close-to-close log returns i.i.d. normal, so
    nothing known at the close of t says anything about later closes. Open, high, low and volume are
    noise around them."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, N_BARS)))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, 0.003, N_BARS))
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


@dataclass
class Outcome:
    accuracies: list[float]  # held-out directional accuracy, one per model
    sharpes: list[float]  # annualised Sharpe of its long_short backtest
    n_scored: int  # held-out rows per model
    n_returns: int  # backtest returns per model


def train_and_backtest(extra_features: tuple[str, ...] = (), execution_lag: int = 1) -> Outcome:
    """Every algorithm on every seed's random walk, each backtested long/short without costs (costs
    would pull the Sharpe below zero; the question here is skill)."""
    accuracies, sharpes, n_scored, n_returns = [], [], set(), set()
    for seed in SEEDS:
        bars = random_walk_bars(seed)
        for algorithm in ALGORITHMS:
            spec = make_spec(algorithm, extra_features, execution_lag)
            result = train(spec, bars)
            predictions = pd.DataFrame(result.predictions).set_index("ts")[["predicted"]]
            backtested = backtest(predictions, bars, spec, "long_short", {"cost_bps": 0})
            accuracies.append(result.metrics["directional_accuracy"])
            sharpes.append(backtested.metrics["sharpe"])
            n_scored.add(result.metrics["n"])
            n_returns.add(backtested.metrics["n"])
    (scored,), (returns,) = n_scored, n_returns
    return Outcome(accuracies, sharpes, scored, returns)


def null_test_failures(outcome: Outcome) -> dict[str, float]:
    """The checks a model family without skill passes, by name, with the median that failed.

    Each model's held-out accuracy on n rows of a random walk is binomial around 0.5 with standard
    error 0.5 / sqrt(n); its annualised Sharpe over n returns is about normal around 0 with standard
    error sqrt((1 + SR^2 / 2) / n) x sqrt(periods per year), SR = 0 under the null (Lo 2002). Medians
    are over m = the number of random walks, not of models: the models trained on one walk score the
    same held-out returns and are correlated, so counting them as independent would narrow the bands
    too much (at worst they are identical and m is exact). The median of m normal draws has standard
    error sqrt(pi / 2) sd / sqrt(m); the median of m |Z| (Z standard normal) is 0.6745 with standard
    error 1 / (2 f sqrt(m)), f = 2 phi(0.6745) = 0.636 the density of |Z| there. Bands are 4 standard
    errors: a false alarm about once in 16,000 runs per check.
    """
    m = len(SEEDS)
    accuracy_se = 0.5 / math.sqrt(outcome.n_scored)
    accuracy_band = STANDARD_ERRORS * NORMAL_MEDIAN_SE * accuracy_se / math.sqrt(m)
    sharpe_se = math.sqrt(PERIODS / outcome.n_returns)
    sharpe_limit = sharpe_se * (ABS_NORMAL_MEDIAN + STANDARD_ERRORS * ABS_NORMAL_MEDIAN_SE / math.sqrt(m))
    accuracy = statistics.median(outcome.accuracies)
    abs_sharpe = statistics.median(abs(sharpe) for sharpe in outcome.sharpes)
    failures = {}
    if abs(accuracy - 0.5) > accuracy_band:
        failures["directional_accuracy"] = accuracy
    if abs_sharpe > sharpe_limit:
        failures["abs_sharpe"] = abs_sharpe
    return failures


def test_random_walks_show_no_skill_in_training_nor_in_the_backtest():
    outcome = train_and_backtest()
    assert len(outcome.accuracies) == len(SEEDS) * len(ALGORITHMS)
    assert outcome.n_scored == outcome.n_returns == TEST_WINDOW
    assert null_test_failures(outcome) == {}, (outcome.accuracies, outcome.sharpes)


def _peek(bars_ahead: int):
    """The log return of close from t to t + bars_ahead: known only bars_ahead bars later."""
    return lambda bars: np.log(bars["close"].shift(-bars_ahead) / bars["close"])


# The canaries: features that peek into the future, registered only inside the test, each with the
# execution_lag under which it is tested. The backtest trades the label, so a peek at the label shows in
# both checks.
LEAKS = {
    # The return over the next two bars holds the whole default label (close[t+2] / close[t+1]) and the
    # bar before it: accuracy about 0.75, and a backtest that profits from it.
    "two_bar_return": (_peek(2), 1),
    # With execution_lag 0 the label is close[t+1] / close[t]: the next bar's return is the label itself.
    "next_return": (_peek(1), 0),
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
    assert statistics.median(outcome.accuracies) > 0.65  # far above the band (about 0.5 +- 0.035)
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
