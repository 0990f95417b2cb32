"""The trainer as pure computation on synthetic bars: no leakage, no lookahead, a real gap, skill when
there is some, determinism, artifacts that round-trip safely, exact targets, and clear errors.

No database: every test builds its bars with numpy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from workers import artifacts, training
from workers.algorithms import ALGORITHMS, Algorithm
from workers.features import DEFAULT_FEATURES, FEATURES, compute_features
from workers.training import TRANSFORMS, TrainingError, bars_needed, build_dataset, score, train

# Small but real: enough test rows for the statistical bands below, few trees so the file stays fast.
TRAIN_WINDOW = 600
TEST_WINDOW = 300
FAST_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "RandomForest": {"n_estimators": 20, "min_samples_leaf": 5},
    "ExtraTrees": {"n_estimators": 20, "min_samples_leaf": 5},
    "GradientBoosting": {"n_estimators": 20, "max_depth": 2},
    "HistGradientBoosting": {"max_iter": 20},
    "ElasticNet": {"alpha": 1e-4},
    "Ridge": {},
    "Lasso": {"alpha": 1e-4},
    "LinearRegression": {},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_process():
    """As in the worker's training process: one BLAS/OpenMP thread, so timings do not depend on load."""
    with threadpool_limits(1):
        yield


def make_bars(returns: np.ndarray, seed: int, gap_share: float = 0.5) -> pd.DataFrame:
    """Daily bars whose close-to-close log returns are `returns`, split into an overnight gap
    (open against the previous close) and an intraday move (close against the open), with high/low
    wicks and log-normal volume."""
    rng = np.random.default_rng(seed)
    n = len(returns)
    gap = rng.normal(0.0, np.std(returns) * math.sqrt(gap_share), n)
    close = 100.0 * np.exp(np.cumsum(returns))
    previous_close = np.concatenate([[100.0], close[:-1]])
    open_ = previous_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.005, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.005, n)))
    volume = np.round(np.exp(rng.normal(13.0, 0.3, n)))
    index = pd.date_range("2015-01-01", periods=n, freq="D", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def random_walk(n: int = 1600, seed: int = 7) -> pd.DataFrame:
    """A geometric random walk without drift: nothing about the future is in the past."""
    return make_bars(np.random.default_rng(seed).normal(0.0, 0.012, n), seed + 1)


def ar1(phi: float, n: int = 1600, seed: int = 11) -> pd.DataFrame:
    """Close-to-close log returns r[t] = phi * r[t-1] + noise: ret_1 predicts the next return."""
    noise = np.random.default_rng(seed).normal(0.0, 0.01, n)
    returns = np.empty(n)
    returns[0] = noise[0]
    for t in range(1, n):
        returns[t] = phi * returns[t - 1] + noise[t]
    return make_bars(returns, seed + 1)


def make_spec(**overrides: Any) -> dict[str, Any]:
    spec = {
        "symbol": "SYN",
        "timeframe": "1d",
        "target_col": "close",
        "target_transform": "log_return",
        "horizon": 1,
        "algorithm": "Ridge",
        "hyperparameters": {},
        "features": list(DEFAULT_FEATURES),
        "train_window": TRAIN_WINDOW,
        "test_window": TEST_WINDOW,
        "data_end": None,
        "cv_folds": 3,
    }
    spec.update(overrides)
    if "hyperparameters" not in overrides:
        spec["hyperparameters"] = dict(FAST_HYPERPARAMETERS[spec["algorithm"]])
    return spec


def positions(bars: pd.DataFrame, index: pd.Index) -> np.ndarray:
    return bars.index.get_indexer(index)


# --- no leakage -------------------------------------------------------------------------------------


@functools.cache
def walk() -> pd.DataFrame:
    return random_walk()


def assert_no_skill(metrics: dict[str, Any], actual: np.ndarray, horizon: int):
    """Held-out metrics of a model that cannot know the future (`actual`: held-out log returns). Bands
    are 4 standard errors wide, with the effective sample size n / horizon (overlapping targets are
    correlated)."""
    moved = actual != 0
    n_effective = moved.sum() / horizon
    up = float(np.mean(actual[moved] > 0))
    margin = 4 * 0.5 / math.sqrt(n_effective)
    accuracy = metrics["directional_accuracy"]
    # A model without skill does no better than always calling the more frequent direction (0.5 for
    # close/open; high and low move mostly one way against the close, legitimately), nor much worse
    # than always calling the rarer one.
    assert min(up, 1 - up) - margin <= accuracy <= max(up, 1 - up) + margin, (accuracy, up, margin)
    ic_band = 4 / math.sqrt(n_effective)
    assert abs(metrics["ic"]) <= ic_band, metrics["ic"]
    # r2_score(actual, predicted) <= (Pearson) correlation ** 2: no more than the square of its band.
    assert metrics["r2"] <= ic_band**2, metrics["r2"]
    assert len(actual) == metrics["n"] == TEST_WINDOW


@pytest.mark.parametrize("algorithm", ["RandomForest", "Ridge", "HistGradientBoosting"])
@pytest.mark.parametrize(
    ("target_col", "horizon"), [("close", 1), ("open", 1), ("high", 1), ("low", 1), ("close", 5)]
)
def test_random_walk_shows_no_skill(algorithm, target_col, horizon):
    bars = walk()
    spec = make_spec(
        algorithm=algorithm,
        target_col=target_col,
        horizon=horizon,
        features=[*DEFAULT_FEATURES, "overnight_gap"],
    )
    result = train(spec, bars)
    actual = np.array([p["actual"] for p in result.predictions])
    assert_no_skill(result.metrics, actual, horizon)
    if target_col in ("close", "open") and horizon == 1:
        # Up and down equally likely: the band is centred on 0.5.
        margin = 4 * 0.5 / math.sqrt(TEST_WINDOW)
        assert abs(result.metrics["directional_accuracy"] - 0.5) <= margin


def _held_out_skill(bars: pd.DataFrame, features: list[str], target: pd.Series) -> dict[str, Any]:
    """Fit a scaled Ridge on the same rows sfq would use, with an arbitrary target, and score it."""
    spec = make_spec(features=features)
    dataset = build_dataset(bars, spec)
    model = make_pipeline(StandardScaler(), Ridge()).fit(dataset.X_train, target.loc[dataset.X_train.index])
    actual = target.loc[dataset.X_test.index].to_numpy()
    predicted = model.predict(dataset.X_test)
    return score(actual, predicted, actual, predicted)


def test_open_target_against_close_has_no_skill_where_open_against_open_would_leak():
    """Targets are measured against the close at t. Measured against the open at t instead, the open
    target would contain bar t's own intraday move (known at t) and show skill on a random walk."""
    bars = walk()
    features = [*DEFAULT_FEATURES, "overnight_gap"]

    leaky = np.log(bars["open"].shift(-1) / bars["open"])
    leaky_scores = _held_out_skill(bars, features, leaky)
    assert leaky_scores["ic"] > 0.3 and leaky_scores["directional_accuracy"] > 0.6, leaky_scores

    sfq_target = np.log(bars["open"].shift(-1) / bars["close"])
    dataset = build_dataset(bars, make_spec(target_col="open", features=features))
    np.testing.assert_allclose(dataset.y_test, sfq_target.loc[dataset.y_test.index], rtol=1e-12)
    result = train(make_spec(target_col="open", features=features), bars)
    actual = np.array([p["actual"] for p in result.predictions])
    assert_no_skill(result.metrics, actual, 1)
    assert abs(result.metrics["directional_accuracy"] - 0.5) <= 4 * 0.5 / math.sqrt(TEST_WINDOW)


# --- skill when there is some -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["Ridge", "LinearRegression"])
def test_predictable_series_shows_skill(algorithm):
    bars = ar1(phi=0.6)
    result = train(make_spec(algorithm=algorithm), bars)
    metrics = result.metrics
    # With phi = 0.6 the expected accuracy is 0.5 + asin(0.6) / pi = 0.70 and the correlation 0.6.
    assert metrics["directional_accuracy"] > 0.5 + 4 * 0.5 / math.sqrt(TEST_WINDOW), metrics
    assert metrics["ic"] > 0.4, metrics
    assert metrics["r2"] > 0.2, metrics
    assert metrics["rmse"] < metrics["naive_rmse"], metrics
    assert metrics["cv_directional_accuracy_mean"] > 0.6, metrics
    top = result.importances[0]
    assert top["feature"] == "ret_1" and top["rank"] == 1 and top["method"] == "abs_coefficient"


# --- no lookahead in any feature --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("t", [150, 260, 399])
def test_feature_uses_no_bar_after_its_row(name, t):
    bars = random_walk(n=500, seed=3)
    changed = bars.copy()
    other = random_walk(n=500, seed=4)
    later = changed.index > changed.index[t]
    # Later bars replaced by a different series at three times the price and other volumes.
    for column in ("open", "high", "low", "close"):
        changed.loc[later, column] = other.loc[later, column] * 3.0
    changed.loc[later, "volume"] = other.loc[later, "volume"] * 7.0 + 1.0

    original = compute_features(bars, [name])[name]
    perturbed = compute_features(changed, [name])[name]
    truncated = compute_features(bars.iloc[: t + 1], [name])[name]

    np.testing.assert_array_equal(perturbed.iloc[: t + 1].to_numpy(), original.iloc[: t + 1].to_numpy())
    np.testing.assert_array_equal(truncated.to_numpy(), original.iloc[: t + 1].to_numpy())
    # The perturbation does reach the feature after t (otherwise the check above would prove nothing).
    assert not np.allclose(perturbed.iloc[t + 1 :], original.iloc[t + 1 :], equal_nan=True)


# --- the gap between training and test --------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 3, 10])
def test_split_keeps_a_gap_of_the_horizon(horizon):
    bars = random_walk(n=1200)
    spec = make_spec(horizon=horizon, train_window=400, test_window=200)
    dataset = build_dataset(bars, spec)
    train_rows = positions(bars, dataset.X_train.index)
    test_rows = positions(bars, dataset.X_test.index)
    assert len(train_rows) == len(dataset.y_train) == 400
    assert len(test_rows) == len(dataset.y_test) == len(dataset.reference_test) == 200
    # The last training target (bar train_rows[-1] + horizon) is known before the first test row.
    assert train_rows[-1] + horizon < test_rows[0]
    # Contiguous windows, and the test window is the latest rows whose target exists.
    assert (np.diff(train_rows) == 1).all() and (np.diff(test_rows) == 1).all()
    assert test_rows[-1] == len(bars) - 1 - horizon
    assert dataset.reference_test.equals(bars["close"].loc[dataset.X_test.index])


class RecordingRidge(Ridge):
    """Ridge that records which rows (timestamps) it is fitted on and predicts for."""

    calls: ClassVar[list[tuple[str, pd.Index]]] = []

    def fit(self, X, y, sample_weight=None):
        RecordingRidge.calls.append(("fit", X.index))
        return super().fit(X, y, sample_weight)

    def predict(self, X):
        RecordingRidge.calls.append(("predict", X.index))
        return super().predict(X)


@pytest.mark.parametrize("horizon", [1, 4])
def test_cross_validation_folds_keep_a_gap_of_the_horizon(monkeypatch, horizon):
    monkeypatch.setitem(
        training.ALGORITHMS, "Recording", Algorithm("Recording", RecordingRidge, scaled=False)
    )
    monkeypatch.setattr(RecordingRidge, "calls", [])
    bars = random_walk(n=1200)
    folds = 4
    spec = make_spec(algorithm="Recording", hyperparameters={}, horizon=horizon, cv_folds=folds)
    dataset = build_dataset(bars, spec)
    result = train(spec, bars)

    calls = RecordingRidge.calls
    assert [kind for kind, _ in calls] == ["fit", "predict"] * (folds + 1)
    train_rows = positions(bars, dataset.X_train.index)
    previous_fit = None
    for fold in range(folds):
        fit_rows = positions(bars, calls[2 * fold][1])
        scored_rows = positions(bars, calls[2 * fold + 1][1])
        assert fit_rows[-1] + horizon < scored_rows[0], f"fold {fold + 1} has no gap"
        assert (
            fit_rows[0] == train_rows[0] and scored_rows[-1] <= train_rows[-1]
        )  # inside the training window
        if previous_fit is not None:
            assert len(fit_rows) > len(previous_fit)  # expanding
        previous_fit = fit_rows
        fold_metrics = result.fold_metrics[fold]
        assert fold_metrics["fold"] == fold + 1
        assert fold_metrics["train_size"] == len(fit_rows) and fold_metrics["n"] == len(scored_rows)
        # TimeSeriesSplit(gap=horizon): exactly `horizon` rows dropped between fit and score.
        assert scored_rows[0] - fit_rows[-1] == horizon + 1
        assert fold_metrics["train_size"] + horizon + (folds - fold) * fold_metrics["n"] == TRAIN_WINDOW
    final_fit = calls[-2][1]
    final_predict = calls[-1][1]
    assert final_fit.equals(dataset.X_train.index) and final_predict.equals(dataset.X_test.index)
    assert positions(bars, final_fit)[-1] + horizon < positions(bars, final_predict)[0]


# --- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RandomForest", "HistGradientBoosting"])
def test_training_is_deterministic(algorithm):
    bars = random_walk(n=900)
    hyperparameters = {**FAST_HYPERPARAMETERS[algorithm]}
    if algorithm == "RandomForest":
        hyperparameters["max_features"] = 0.5  # random feature subsets as well as bootstrap samples
    spec = make_spec(algorithm=algorithm, hyperparameters=hyperparameters, train_window=400, test_window=150)
    first, second = train(spec, bars), train(spec, bars)
    assert first.metrics == second.metrics
    assert first.fold_metrics == second.fold_metrics
    assert first.importances == second.importances
    assert first.predictions == second.predictions
    # skops names its arrays by id() in the file, so the bytes (and their sha256) differ from dump to
    # dump; the models they hold predict the same.
    X_test = build_dataset(bars, spec).X_test
    np.testing.assert_array_equal(
        artifacts.load(first.artifact, first.artifact_sha256).predict(X_test),
        artifacts.load(second.artifact, second.artifact_sha256).predict(X_test),
    )


# --- artifacts --------------------------------------------------------------------------------------


SMALL = {"train_window": 300, "test_window": 100, "cv_folds": 2}


@functools.cache
def small_bars() -> pd.DataFrame:
    return random_walk(n=800, seed=21)


@functools.cache
def trained(algorithm: str):
    return train(make_spec(algorithm=algorithm, **SMALL), small_bars())


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_artifact_round_trips_for_every_algorithm(algorithm):
    result = trained(algorithm)
    assert result.artifact_sha256 == hashlib.sha256(result.artifact).hexdigest()
    model = artifacts.load(result.artifact, result.artifact_sha256)
    X_test = build_dataset(small_bars(), make_spec(algorithm=algorithm, **SMALL)).X_test
    predicted = model.predict(X_test)
    np.testing.assert_array_equal(predicted, [p["predicted"] for p in result.predictions])
    assert [p["ts"] for p in result.predictions] == list(X_test.index.to_pydatetime())
    assert type(model[-1]) is ALGORITHMS[algorithm].estimator


def test_trusted_types_are_exactly_those_the_algorithms_need():
    needed = set()
    for algorithm in ALGORITHMS:
        needed.update(sio.get_untrusted_types(data=trained(algorithm).artifact))
    assert needed == set(artifacts.TRUSTED_TYPES)


def test_artifact_with_wrong_sha256_is_refused_before_parsing():
    result = trained("Ridge")
    with pytest.raises(artifacts.ArtifactError, match="does not match"):
        artifacts.load(result.artifact, hashlib.sha256(b"something else").hexdigest())
    corrupted = bytearray(result.artifact)
    corrupted[len(corrupted) // 2] ^= 0xFF
    with pytest.raises(artifacts.ArtifactError, match="corrupted"):
        artifacts.load(bytes(corrupted), result.artifact_sha256)


def test_artifact_with_untrusted_type_is_refused():
    # A pipeline that would call os.system on its input: a valid skops file whose sha256 matches.
    hostile = make_pipeline(FunctionTransformer(func=os.system), Ridge())
    blob = sio.dumps(hostile)
    assert sio.get_untrusted_types(data=blob)  # skops itself does not trust it
    with pytest.raises(artifacts.ArtifactError, match="system"):
        artifacts.load(blob, hashlib.sha256(blob).hexdigest())


# --- exact targets ----------------------------------------------------------------------------------


def hand_made_bars() -> pd.DataFrame:
    close = [100.0, 110.0, 99.0, 99.0, 120.0, 96.0, 100.0, 90.0]
    open_ = [98.0, 105.0, 100.0, 97.0, 121.0, 100.0, 95.0, 92.0]
    high = [max(o, c) + 2 for o, c in zip(open_, close, strict=True)]  # 102 112 102 101 123 102 102 94
    low = [min(o, c) - 2 for o, c in zip(open_, close, strict=True)]  # 96 103 97 95 118 94 93 88
    index = pd.date_range("2024-01-01", periods=len(close), freq="D", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": [1000.0] * len(close)},
        index=index,
    )


@pytest.mark.parametrize(
    ("target_col", "transform", "horizon", "expected_train", "expected_test"),
    [
        # target at t = target_col at t + horizon against the close at t
        ("close", "diff", 1, [10, -11, 0], [-24, 4, -10]),
        ("open", "diff", 1, [5, -10, -2], [-20, -1, -8]),
        ("close", "diff", 2, [-1, -11], [-20, -6]),
        ("close", "pct_change", 1, [0.1, -0.1, 0.0], [-0.2, 1 / 24, -0.1]),
        ("open", "pct_change", 1, [0.05, -1 / 11, -2 / 99], [-1 / 6, -1 / 96, -0.08]),
        (
            "high",
            "log_return",
            1,
            [math.log(112 / 100), math.log(102 / 110), math.log(101 / 99)],
            [math.log(102 / 120), math.log(102 / 96), math.log(94 / 100)],
        ),
        ("low", "raw", 1, [103, 97, 95], [94, 93, 88]),
        ("close", "raw", 2, [99, 99], [100, 90]),
    ],
)
def test_target_values_are_exact(target_col, transform, horizon, expected_train, expected_test):
    bars = hand_made_bars()
    usable = len(bars) - horizon  # hl_range has no warm-up; the last `horizon` rows have no target
    test_window = (usable - horizon) // 2
    spec = make_spec(
        target_col=target_col,
        target_transform=transform,
        horizon=horizon,
        features=["hl_range"],
        train_window=usable - horizon - test_window,
        test_window=test_window,
    )
    dataset = build_dataset(bars, spec)
    assert dataset.y_train.to_numpy() == pytest.approx(expected_train, rel=1e-12, abs=1e-12)
    assert dataset.y_test.to_numpy() == pytest.approx(expected_test, rel=1e-12, abs=1e-12)
    assert list(positions(bars, dataset.X_test.index)) == list(range(usable - test_window, usable))
    assert (
        dataset.reference_test.to_numpy().tolist()
        == bars["close"].iloc[usable - test_window : usable].tolist()
    )


def test_directional_accuracy_of_raw_target_is_against_close_at_prediction_time():
    change = TRANSFORMS["raw"].change
    actual = np.array([101.0, 99.0, 100.0, 102.0])
    predicted = np.array([100.5, 100.5, 99.0, 101.0])
    reference = np.array([100.0, 100.0, 100.0, 100.0])
    # Moves: +1, -1, 0 (not counted), +2; predicted moves: +, +, -, +: right, wrong, -, right.
    scores = score(actual, predicted, change(actual, reference), change(predicted, reference))
    assert scores["directional_accuracy"] == pytest.approx(2 / 3)


def test_trained_raw_model_scores_direction_against_close():
    bars = random_walk(n=900)
    spec = make_spec(target_transform="raw", train_window=400, test_window=200)
    result = train(spec, bars)
    close_then = bars["close"].loc[[p["ts"] for p in result.predictions]].to_numpy()
    predicted = np.array([p["predicted"] for p in result.predictions])
    actual = np.array([p["actual"] for p in result.predictions])
    moved = actual != close_then
    expected = np.mean(np.sign(predicted - close_then)[moved] == np.sign(actual - close_then)[moved])
    assert result.metrics["directional_accuracy"] == pytest.approx(expected)
    # Signs of the levels themselves (all positive) would agree every time: that is not what is measured.
    assert result.metrics["directional_accuracy"] < 0.75
    assert result.metrics["naive_rmse"] == pytest.approx(math.sqrt(np.mean((actual - close_then) ** 2)))


# --- errors -----------------------------------------------------------------------------------------


def test_no_bars_is_a_training_error():
    bars = random_walk(n=10).iloc[:0]
    with pytest.raises(TrainingError, match="no bars for SYN \\(1d\\) up to now"):
        train(make_spec(), bars)


def test_too_few_bars_is_a_training_error_with_the_numbers():
    bars = random_walk(n=100)
    # ret_1 needs one bar of history and the last bar has no target: 98 usable rows.
    spec = make_spec(features=["ret_1"], train_window=80, test_window=18)  # 80 + 1 + 18 = 99
    with pytest.raises(TrainingError, match="not enough bars") as error:
        train(spec, bars)
    assert "98 usable rows" in str(error.value)
    assert "train_window + horizon + test_window = 99" in str(error.value)

    dataset = build_dataset(bars, {**spec, "test_window": 17})  # exactly enough
    assert len(dataset.X_train) == 80 and len(dataset.X_test) == 17


def test_bars_needed_cover_the_longest_warm_up():
    spec = make_spec(features=list(FEATURES), horizon=5, train_window=300, test_window=100)
    bars = random_walk(n=2000).iloc[-bars_needed(spec) :]
    dataset = build_dataset(bars, spec)
    assert len(dataset.X_train) == 300 and len(dataset.X_test) == 100
    assert dataset.X_train.notna().all().all()
