"""The trainer as pure computation on synthetic bars: no leakage, no lookahead, a real gap, skill when
there is some, determinism, artifacts that round-trip safely, exact targets, and clear errors; and every
field of a spec changing training the way it says (CV strategy, grids, context symbols, regimes), and
the live forecast.

No database: every test builds its bars with numpy.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import math
import os
import re
import subprocess
import sys
from typing import Any, ClassVar
from zipfile import ZipFile

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from tests.conftest import ROOT
from workers.modelling import artifacts, contract, training
from workers.modelling.algorithms import ALGORITHMS, Algorithm
from workers.modelling.features import DEFAULT_FEATURES, FEATURES, compute_features
from workers.modelling.regimes import REGIMES, PerRegime, RegimeConfig
from workers.modelling.splits import SPLITTERS, PurgedKFold
from workers.modelling.training import (
    TRANSFORMS,
    TrainingError,
    bars_needed,
    build_dataset,
    build_features,
    forecast,
    score,
    train,
)

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
        "execution_lag": 0,  # the label from the signal's close: hand-made expectations read t + horizon
        "algorithm": "Ridge",
        "hyperparameters": {},
        "features": list(DEFAULT_FEATURES),
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


@pytest.mark.parametrize(
    ("rows", "early_stopping", "validated"), [(12_000, "auto", 1_200), (9_000, "auto", 0)]
)
def test_hist_gradient_boosting_stops_early_on_the_latest_rows_not_a_shuffled_sample(
    monkeypatch, rows, early_stopping, validated
):
    """Above 10,000 rows early_stopping="auto" turns on: its validation set is the latest 10 % of the
    rows (validation_fraction), fitted on the rows before them; below, it stays off."""
    seen: dict[str, Any] = {}
    fit = HistGradientBoostingRegressor.fit

    def recording(self, X, y, sample_weight=None, **kwargs):
        seen.update(X=X, **kwargs)
        return fit(self, X, y, sample_weight, **kwargs)

    monkeypatch.setattr(HistGradientBoostingRegressor, "fit", recording)
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    y = pd.Series(X["a"] + rng.normal(size=rows))
    model = ALGORITHMS["HistGradientBoosting"].build({"max_iter": 5, "early_stopping": early_stopping})
    model.fit(X, y)
    if validated:
        assert list(seen["X_val"].index) == list(range(rows - validated, rows))
        assert list(seen["X"].index) == list(range(rows - validated))
        assert seen["y_val"].equals(y.iloc[rows - validated :])
    else:
        assert "X_val" not in seen and len(seen["X"]) == rows


@pytest.mark.parametrize(("horizon", "lag"), [(1, 0), (3, 0), (10, 0), (1, 1), (3, 2)])
def test_split_keeps_a_gap_of_the_labels_reach(horizon, lag):
    bars = random_walk(n=1200)
    spec = make_spec(horizon=horizon, execution_lag=lag, train_window=400, test_window=200)
    reach = horizon + lag
    dataset = build_dataset(bars, spec)
    train_rows = positions(bars, dataset.X_train.index)
    test_rows = positions(bars, dataset.X_test.index)
    assert len(train_rows) == len(dataset.y_train) == 400
    assert len(test_rows) == len(dataset.y_test) == len(dataset.reference_test) == 200
    # The last training label (bar train_rows[-1] + lag + horizon) is known before the first test row.
    assert train_rows[-1] + reach < test_rows[0]
    # Contiguous windows, and the test window is the latest rows whose label exists.
    assert (np.diff(train_rows) == 1).all() and (np.diff(test_rows) == 1).all()
    assert test_rows[-1] == len(bars) - 1 - reach
    # The reference is the entry close, lag bars after the signal.
    assert (dataset.reference_test.to_numpy() == bars["close"].to_numpy()[test_rows + lag]).all()


class RecordingRidge(Ridge):
    """Ridge that records which rows (timestamps) it is fitted on and predicts for."""

    calls: ClassVar[list[tuple[str, pd.Index]]] = []

    def fit(self, X, y, sample_weight=None):
        RecordingRidge.calls.append(("fit", X.index))
        return super().fit(X, y, sample_weight)

    def predict(self, X):
        RecordingRidge.calls.append(("predict", X.index))
        return super().predict(X)


@pytest.mark.parametrize(("horizon", "lag"), [(1, 0), (4, 0), (1, 1), (2, 2)])
def test_cross_validation_folds_keep_a_gap_of_the_labels_reach(monkeypatch, horizon, lag):
    monkeypatch.setitem(
        training.ALGORITHMS, "Recording", Algorithm("Recording", RecordingRidge, scaled=False)
    )
    monkeypatch.setattr(RecordingRidge, "calls", [])
    bars = random_walk(n=1200)
    folds = 4
    spec = make_spec(
        algorithm="Recording", hyperparameters={}, horizon=horizon, execution_lag=lag, cv_folds=folds
    )
    reach = horizon + lag
    dataset = build_dataset(bars, spec)
    result = train(spec, bars)

    calls = RecordingRidge.calls
    assert [kind for kind, _ in calls] == ["fit", "predict"] * (folds + 1)
    train_rows = positions(bars, dataset.X_train.index)
    previous_fit = None
    for fold in range(folds):
        fit_rows = positions(bars, calls[2 * fold][1])
        scored_rows = positions(bars, calls[2 * fold + 1][1])
        assert fit_rows[-1] + reach < scored_rows[0], f"fold {fold + 1} has no gap"
        assert (
            fit_rows[0] == train_rows[0] and scored_rows[-1] <= train_rows[-1]
        )  # inside the training window
        if previous_fit is not None:
            assert len(fit_rows) > len(previous_fit)  # expanding
        previous_fit = fit_rows
        fold_metrics = result.fold_metrics[fold]
        assert fold_metrics["fold"] == fold + 1
        assert fold_metrics["train_size"] == len(fit_rows) and fold_metrics["n"] == len(scored_rows)
        # TimeSeriesSplit(gap=lag + horizon): exactly that many rows dropped between fit and score.
        assert scored_rows[0] - fit_rows[-1] == reach + 1
        assert fold_metrics["train_size"] + reach + (folds - fold) * fold_metrics["n"] == TRAIN_WINDOW
    final_fit = calls[-2][1]
    final_predict = calls[-1][1]
    assert final_fit.equals(dataset.X_train.index) and final_predict.equals(dataset.X_test.index)
    assert positions(bars, final_fit)[-1] + reach < positions(bars, final_predict)[0]


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
    # The same file, byte for byte (artifacts.dump numbers what skops names by id()): a model evicted by
    # the retention policy is rebuilt to its recorded SHA-256.
    assert first.artifact == second.artifact and first.artifact_sha256 == second.artifact_sha256
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


def test_model_files_are_the_same_bytes_in_processes_with_different_hash_seeds():
    """What an evicted file's rebuild relies on: the file of every algorithm (and of a per-regime model)
    hashes the same in two processes whose str hashes differ (set and dict orders, ids, memory)."""
    script = (
        "import json; from tests.test_training import trained, trained_per_regime;"
        "from workers.modelling.algorithms import ALGORITHMS;"
        "hashes = {a: trained(a).artifact_sha256 for a in ALGORITHMS};"
        "hashes['per_regime'] = trained_per_regime().artifact_sha256; print(json.dumps(hashes))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        for seed in ("1", "2")
    ]
    first, second = (json.loads(run.stdout.splitlines()[-1]) for run in runs)
    assert first == second and len(first) == len(ALGORITHMS) + 1


@pytest.mark.parametrize("algorithm", ["RandomForest", "HistGradientBoosting"])
def test_artifact_is_the_skops_file_skops_would_write(algorithm):
    """artifacts.dump writes skops' own schema and arrays, only without the JSON indentation."""

    def contents(blob: bytes) -> tuple[str, list[bytes], int]:
        """The schema with object ids (they name the array files too, and change on each save)
        blanked, the arrays, and the schema's size."""
        with ZipFile(io.BytesIO(blob)) as archive:
            schema = archive.read("schema.json")
            arrays = sorted(archive.read(name) for name in archive.namelist() if name != "schema.json")
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        return re.sub(r'"__id__": \d+|\d+\.npy', "#", canonical), arrays, len(schema)

    model = artifacts.load(trained(algorithm).artifact, trained(algorithm).artifact_sha256)
    ours, theirs = contents(artifacts.dump(model)), contents(sio.dumps(model))
    assert ours[:2] == theirs[:2]
    assert ours[2] < theirs[2] / 2


def test_trusted_types_are_exactly_those_the_algorithms_need():
    needed = set()
    for algorithm in ALGORITHMS:
        needed.update(sio.get_untrusted_types(data=trained(algorithm).artifact))
    needed.update(sio.get_untrusted_types(data=trained_per_regime().artifact))
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
    ("target_col", "transform", "horizon", "lag", "expected_train", "expected_test"),
    [
        # target at t = target_col at t + lag + horizon against the close at t + lag
        ("close", "diff", 1, 0, [10, -11, 0], [-24, 4, -10]),
        ("open", "diff", 1, 0, [5, -10, -2], [-20, -1, -8]),
        ("close", "diff", 2, 0, [-1, -11], [-20, -6]),
        ("close", "pct_change", 1, 0, [0.1, -0.1, 0.0], [-0.2, 1 / 24, -0.1]),
        ("open", "pct_change", 1, 0, [0.05, -1 / 11, -2 / 99], [-1 / 6, -1 / 96, -0.08]),
        (
            "high",
            "log_return",
            1,
            0,
            [math.log(112 / 100), math.log(102 / 110), math.log(101 / 99)],
            [math.log(102 / 120), math.log(102 / 96), math.log(94 / 100)],
        ),
        ("low", "raw", 1, 0, [103, 97, 95], [94, 93, 88]),
        ("close", "raw", 2, 0, [99, 99], [100, 90]),
        # The default lag: close[t + 2] - close[t + 1], open[t + 2] / close[t + 1] - 1.
        ("close", "diff", 1, 1, [-11, 0], [4, -10]),
        ("open", "pct_change", 1, 1, [-1 / 11, -2 / 99], [-1 / 96, -0.08]),
        ("close", "diff", 2, 1, [-11], [-6]),
    ],
)
def test_target_values_are_exact(target_col, transform, horizon, lag, expected_train, expected_test):
    bars = hand_made_bars()
    reach = lag + horizon
    usable = len(bars) - reach  # hl_range has no warm-up; the last `reach` rows have no target
    test_window = (usable - reach) // 2
    spec = make_spec(
        target_col=target_col,
        target_transform=transform,
        horizon=horizon,
        execution_lag=lag,
        features=["hl_range"],
        train_window=usable - reach - test_window,
        test_window=test_window,
    )
    dataset = build_dataset(bars, spec)
    assert dataset.y_train.to_numpy() == pytest.approx(expected_train, rel=1e-12, abs=1e-12)
    assert dataset.y_test.to_numpy() == pytest.approx(expected_test, rel=1e-12, abs=1e-12)
    assert list(positions(bars, dataset.X_test.index)) == list(range(usable - test_window, usable))
    assert (
        dataset.reference_test.to_numpy().tolist()
        == bars["close"].iloc[usable - test_window + lag : usable + lag].tolist()
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
    assert "train_window + execution_lag + horizon + test_window = 99" in str(error.value)

    dataset = build_dataset(bars, {**spec, "test_window": 17})  # exactly enough
    assert len(dataset.X_train) == 80 and len(dataset.X_test) == 17


def test_bars_needed_cover_the_longest_warm_up():
    spec = make_spec(features=list(FEATURES), horizon=5, train_window=300, test_window=100)
    bars = random_walk(n=2000).iloc[-bars_needed(spec) :]
    dataset = build_dataset(bars, spec)
    assert len(dataset.X_train) == 300 and len(dataset.X_test) == 100
    assert dataset.X_train.notna().all().all()


@pytest.mark.parametrize(
    ("config", "warmup"),
    [
        ({"kind": "volatility", "window": 30}, 30 + 250 - 1),  # min_history 250 by default
        ({"kind": "trend", "window": 300, "lookback": 20}, 300 + 20 - 1),
    ],
)
def test_bars_needed_cover_the_regimes_and_context_warm_up(config, warmup):
    spec = make_spec(
        features=list(FEATURES),
        horizon=5,
        train_window=300,
        test_window=100,
        context_symbols=["CTX"],
        regime_configs=[config],
    )
    assert bars_needed(spec) == warmup + 300 + 2 * 5 + 100
    # Each symbol's latest bars_needed bars, as the training process loads them.
    bars = random_walk(n=2000).iloc[-bars_needed(spec) :]
    context = {"CTX": random_walk(n=2000, seed=5).iloc[-bars_needed(spec) :]}
    dataset = build_dataset(bars, spec, context)
    assert len(dataset.X_train) == 300 and len(dataset.X_test) == 100
    assert dataset.X_train.notna().all().all()
    with pytest.raises(TrainingError, match="not enough bars"):  # exactly enough: one bar fewer fails
        build_dataset(bars.iloc[1:], spec, context)


# --- cv_strategy ------------------------------------------------------------------------------------

STRATEGIES = list(SPLITTERS)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("horizon", [1, 5])
def test_every_splitter_keeps_a_gap_of_the_horizon(strategy, horizon):
    n_rows, folds = 600, 5
    splitter = SPLITTERS[strategy](folds, horizon, n_rows)
    splits = list(splitter.split(np.empty((n_rows, 1))))
    assert len(splits) == splitter.get_n_splits() == folds
    for fit, scored in splits:
        assert (np.diff(scored) == 1).all()  # one contiguous block of scored rows
        # At least `horizon` rows between any fitted row and any scored row, on either side: no training
        # target [t, t + horizon] reaches a scored row, nor a scored target a training row.
        assert np.abs(fit[:, None] - scored[None, :]).min() > horizon


@pytest.mark.parametrize(("horizon", "lookback"), [(1, 0), (3, 0), (10, 0), (1, 50), (3, 199)])
def test_purged_folds_drop_the_horizon_before_and_an_embargo_after(horizon, lookback):
    n_rows, folds = 600, 5
    # 6 rows (1 %) when the horizon and the features' lookback are shorter.
    embargo = max(horizon, lookback, math.ceil(0.01 * n_rows))
    scored_rows = []
    for fit, scored in SPLITTERS["purged"](folds, horizon, n_rows, lookback).split(np.empty((n_rows, 1))):
        start, stop = scored[0], scored[-1] + 1
        assert list(fit) == [row for row in range(n_rows) if row < start - horizon or row >= stop + embargo]
        scored_rows.extend(scored)
    # k-fold without shuffling: every row scored once, in order, middle folds trained on both sides.
    assert scored_rows == list(range(n_rows))


def test_the_purged_embargo_covers_the_longest_feature_lookback_of_the_spec():
    """ma_ratio_200 at row t averages bars t - 199 .. t: a training row within 199 rows after a scored
    fold would carry that fold's prices, so the embargo is 199 rows; without it, 1 % or the horizon."""
    assert training.feature_lookback(make_spec(features=["ret_1", "ma_ratio_200"])) == 199
    assert training.feature_lookback(make_spec(features=["hl_range"])) == 0
    trend = make_spec(features=["ret_5"], regime_configs=[{"kind": "trend", "window": 50, "lookback": 5}])
    assert training.feature_lookback(trend) == 55
    for name, feature in FEATURES.items():  # each declared lookback is what the computation depends on
        bars = random_walk(n=400)
        changed = bars.copy()
        t = 350
        changed.iloc[t - feature.lookback - 1] *= 1.5  # one bar just beyond the lookback, volume too
        before = compute_features(bars, [name])[name].iloc[t]
        after = compute_features(changed, [name])[name].iloc[t]
        assert after == pytest.approx(before, rel=0.011 if name == "rsi_14" else 1e-12), name


def test_purged_splitter_works_inside_grid_search():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = X @ [1.0, -1.0, 0.5] + rng.normal(size=300)
    search = GridSearchCV(Ridge(), {"alpha": [0.1, 1000.0]}, cv=PurgedKFold(4, horizon=2)).fit(X, y)
    assert search.n_splits_ == 4 and search.best_params_ == {"alpha": 0.1}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_training_fits_and_scores_the_splitters_rows(monkeypatch, strategy):
    monkeypatch.setitem(
        training.ALGORITHMS, "Recording", Algorithm("Recording", RecordingRidge, scaled=False)
    )
    monkeypatch.setattr(RecordingRidge, "calls", [])
    bars = random_walk(n=1200)
    spec = make_spec(algorithm="Recording", hyperparameters={}, horizon=3, cv_folds=4, cv_strategy=strategy)
    X = build_dataset(bars, spec).X_train
    result = train(spec, bars)

    calls = RecordingRidge.calls
    splits = list(SPLITTERS[strategy](4, 3, len(X), training.feature_lookback(spec)).split(X))
    assert [kind for kind, _ in calls] == ["fit", "predict"] * 5
    for fold, (fit_rows, scored_rows) in enumerate(splits):
        assert calls[2 * fold][1].equals(X.index[fit_rows])
        assert calls[2 * fold + 1][1].equals(X.index[scored_rows])
        metrics = result.fold_metrics[fold]
        assert metrics["train_size"] == len(fit_rows) and metrics["n"] == len(scored_rows)
        assert (metrics["train_start"], metrics["train_end"]) == (
            X.index[fit_rows[0]].isoformat(),
            X.index[fit_rows[-1]].isoformat(),
        )
        assert (metrics["scored_start"], metrics["scored_end"]) == (
            X.index[scored_rows[0]].isoformat(),
            X.index[scored_rows[-1]].isoformat(),
        )


@functools.cache
def trained_with_strategy(strategy: str):
    return train(make_spec(cv_strategy=strategy, cv_folds=4), ar1(phi=0.6))


def test_expanding_folds_grow_and_sliding_folds_keep_the_first_ones_size():
    expanding = trained_with_strategy("expanding").fold_metrics
    sliding = trained_with_strategy("sliding").fold_metrics
    sizes = [fold["train_size"] for fold in expanding]
    assert all(later > earlier for earlier, later in zip(sizes, sizes[1:], strict=False))
    assert [fold["train_size"] for fold in sliding] == [sizes[0]] * 4
    # The same scored rows; sliding windows move forward instead of starting at the window's start.
    assert [(f["scored_start"], f["scored_end"]) for f in sliding] == [
        (f["scored_start"], f["scored_end"]) for f in expanding
    ]
    assert len({f["train_start"] for f in expanding}) == 1
    assert sorted({f["train_start"] for f in sliding}) == [f["train_start"] for f in sliding]
    assert len({f["train_start"] for f in sliding}) == 4


def test_cv_strategies_give_different_fold_metrics():
    rmse = {
        strategy: [fold["rmse"] for fold in trained_with_strategy(strategy).fold_metrics]
        for strategy in STRATEGIES
    }
    assert rmse["expanding"] != rmse["sliding"] and rmse["sliding"] != rmse["purged"]
    assert rmse["purged"] != rmse["expanding"]
    purged = trained_with_strategy("purged").fold_metrics
    assert purged[0]["scored_start"] < purged[0]["train_start"]  # scored before the rows it is fitted on
    assert purged[1]["train_start"] < purged[1]["scored_start"] < purged[1]["train_end"]  # in the middle
    # The final model is fitted on the same rows whatever the strategy: same held-out scores.
    assert (
        trained_with_strategy("purged").metrics["rmse"] == trained_with_strategy("expanding").metrics["rmse"]
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_too_many_folds_for_the_window_is_a_training_error(strategy):
    spec = make_spec(cv_strategy=strategy, cv_folds=20, train_window=150, test_window=100, horizon=5)
    with pytest.raises(TrainingError, match=f"cross-validation: .*{strategy} CV with 20 folds") as error:
        train(spec, random_walk(n=600))
    assert "use fewer cv_folds or a longer train_window" in str(error.value)


# --- alpha_grid, l1_ratio_grid ----------------------------------------------------------------------

ALPHAS = [0.01, 10.0, 10000.0]


@functools.cache
def tuned(data: str):
    """Ridge with an alpha grid, on a pure-noise target or on an AR(1) signal."""
    return train(make_spec(hyperparameters={}, alpha_grid=ALPHAS), walk() if data == "noise" else ar1(0.6))


def test_alpha_grid_chooses_a_strong_penalty_on_noise_and_a_weak_one_on_a_signal():
    noise, signal = tuned("noise"), tuned("signal")
    assert noise.metrics["chosen_hyperparameters"] == {"alpha": max(ALPHAS)}
    assert signal.metrics["chosen_hyperparameters"]["alpha"] < max(ALPHAS)
    assert [fold["chosen_hyperparameters"] for fold in noise.fold_metrics] == [{"alpha": max(ALPHAS)}] * 3
    for fold in signal.fold_metrics:
        assert fold["chosen_hyperparameters"]["alpha"] in ALPHAS
    assert signal.metrics["directional_accuracy"] > 0.6  # the chosen penalty kept the signal
    # The stored model is the refitted pipeline with the chosen value, not the search.
    for result in (noise, signal):
        model = artifacts.load(result.artifact, result.artifact_sha256)
        assert type(model) is Pipeline and type(model[-1]) is Ridge
        assert model[-1].alpha == result.metrics["chosen_hyperparameters"]["alpha"]
    assert "chosen_hyperparameters" not in trained_with_strategy("expanding").metrics  # no grid, no search


def test_elastic_net_tunes_alpha_and_l1_ratio_together():
    spec = make_spec(
        algorithm="ElasticNet", hyperparameters={}, alpha_grid=[1e-3, 1.0], l1_ratio_grid=[0.2, 0.8]
    )
    result = train(spec, ar1(0.6))
    chosen = result.metrics["chosen_hyperparameters"]
    assert (
        set(chosen) == {"alpha", "l1_ratio"} and chosen["alpha"] == 1e-3
    )  # alpha 1.0 zeroes every coefficient
    assert all(set(fold["chosen_hyperparameters"]) == {"alpha", "l1_ratio"} for fold in result.fold_metrics)
    model = artifacts.load(result.artifact, result.artifact_sha256)
    assert (model[-1].alpha, model[-1].l1_ratio) == (chosen["alpha"], chosen["l1_ratio"])


def test_grid_search_is_nested_inside_each_fold(monkeypatch):
    monkeypatch.setitem(
        training.ALGORITHMS, "Recording", Algorithm("Recording", RecordingRidge, scaled=False)
    )
    monkeypatch.setattr(RecordingRidge, "calls", [])
    bars = random_walk(n=1200)
    horizon = 2
    spec = make_spec(algorithm="Recording", hyperparameters={}, horizon=horizon, alpha_grid=[0.1, 100.0])
    X = build_dataset(bars, spec).X_train
    result = train(spec, bars)

    calls = iter(RecordingRidge.calls)
    for fit_rows, scored_rows in SPLITTERS["expanding"](3, horizon, len(X)).split(X):
        fold_calls = []
        for call in calls:  # this fold's calls end with the prediction of its scored rows
            fold_calls.append(call)
            if call[0] == "predict" and call[1].equals(X.index[scored_rows]):
                break
        *inner, refit, _ = fold_calls
        assert len(inner) == 2 * 3 * 2  # 2 candidates x 3 inner splits, each fitted then scored
        assert refit[0] == "fit" and refit[1].equals(X.index[fit_rows])  # the best, on all the fold's rows
        fitted = set(X.index[fit_rows])
        for (fit_kind, fit_index), (score_kind, score_index) in zip(inner[::2], inner[1::2], strict=True):
            assert (fit_kind, score_kind) == ("fit", "predict")
            # The inner CV sees only the rows the fold fits on, never its scored rows, with its own gap.
            assert set(fit_index) | set(score_index) <= fitted
            assert positions(bars, fit_index)[-1] + horizon < positions(bars, score_index)[0]
    assert len(result.fold_metrics) == 3


# --- context_symbols --------------------------------------------------------------------------------


@functools.cache
def leader_and_follower(n: int = 1600, seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The follower's return r[t + 1] = 0.5 * the leader's r[t] + noise: only the leader's past predicts."""
    rng = np.random.default_rng(seed)
    lead = rng.normal(0.0, 0.01, n)
    follow = np.concatenate([[0.0], 0.5 * lead[:-1] + rng.normal(0.0, 0.005, n - 1)])
    return make_bars(follow, seed + 1), make_bars(lead, seed + 2)


def test_a_leading_context_symbol_gives_skill_that_disappears_without_it():
    follower, leader = leader_and_follower()
    context = {"LEAD": leader}
    with_context = train(make_spec(context_symbols=["LEAD"]), follower, context)
    without = train(make_spec(), follower, context)
    band = 4 * 0.5 / math.sqrt(TEST_WINDOW)
    assert with_context.metrics["directional_accuracy"] > 0.5 + band, with_context.metrics
    assert abs(without.metrics["directional_accuracy"] - 0.5) <= band, without.metrics
    features = [importance["feature"] for importance in with_context.importances]
    assert features[0] == "LEAD/ret_1"
    assert sorted(features) == sorted([*DEFAULT_FEATURES, *(f"LEAD/{name}" for name in DEFAULT_FEATURES)])


def test_missing_context_symbol_is_a_training_error_naming_it():
    follower, leader = leader_and_follower()
    spec = make_spec(context_symbols=["LEAD", "SPY"])
    for context in ({"LEAD": leader}, {"LEAD": leader, "SPY": leader.iloc[:0]}):
        with pytest.raises(TrainingError, match="context symbol SPY has no 1d bars up to 2015-02-19"):
            train(spec, follower, context)
    # Bars that start after the first row the symbol's own features are complete (ma_ratio_50: row 49).
    with pytest.raises(TrainingError, match="context symbol LEAD has no 1d bars up to 2015-02-19"):
        train(make_spec(context_symbols=["LEAD"]), follower, {"LEAD": leader.iloc[50:]})
    with pytest.raises(TrainingError, match="context symbol LEAD"):
        train(make_spec(context_symbols=["LEAD"]), follower)


def test_context_features_come_from_the_last_context_bar_at_or_before_t():
    follower, leader = leader_and_follower(n=400)
    spec = make_spec(context_symbols=["LEAD"])
    day, before, after = follower.index[200], follower.index[199], follower.index[201]
    gappy = leader.drop(index=[day])  # the leader did not trade that day
    own = compute_features(gappy, spec["features"])
    X = build_features(follower, spec, {"LEAD": gappy})
    assert X.loc[day, "LEAD/ret_1"] == own.loc[before, "ret_1"]
    assert X.loc[day, "LEAD/ret_1"] != own.loc[after, "ret_1"]
    np.testing.assert_array_equal(X["LEAD/vol_20"].drop(index=[day]), own["vol_20"])

    # Bars stamped an hour later than the symbol's (another close time) are only used the next day.
    late = leader.set_axis(leader.index + pd.Timedelta(hours=1))
    shifted = build_features(follower, spec, {"LEAD": late})["LEAD/ret_1"]
    expected = compute_features(leader, ["ret_1"])["ret_1"].shift(1)
    np.testing.assert_array_equal(shifted.iloc[1:], expected.iloc[1:])

    # Changing the leader's bars after t changes no context feature at or before t.
    changed = gappy.copy()
    changed.loc[changed.index > day, ["open", "high", "low", "close"]] *= 3.0
    perturbed = build_features(follower, spec, {"LEAD": changed})
    assert perturbed.loc[:day].equals(X.loc[:day])
    assert not perturbed.loc[after:].equals(X.loc[after:])


# --- regime_configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(REGIMES))
def test_regime_parameters_are_declared_once(kind):
    regime = REGIMES[kind]
    assert list(inspect.signature(regime.label).parameters)[1:] == list(regime.parameters)
    assert list(inspect.signature(regime.warmup).parameters) == list(regime.parameters)
    assert regime.declarations["mode"] == {
        "default": "feature",
        "rules": [{"type": "string", "enum": ["feature", "split"]}],
    }
    exported = contract.regime_contract(regime)["parameters"]
    assert set(exported) == {*regime.parameters, "mode"}
    assert RegimeConfig.of({"kind": kind}).settings == {
        name: declared["default"] for name, declared in regime.parameters.items()
    }


@pytest.mark.parametrize("kind", list(REGIMES))
@pytest.mark.parametrize("t", [300, 420])
def test_regime_labels_use_no_bar_after_their_row(kind, t):
    bars = random_walk(n=500, seed=3)
    changed = bars.copy()
    other = random_walk(n=500, seed=4)
    later = changed.index > changed.index[t]
    for column in ("open", "high", "low", "close"):
        changed.loc[later, column] = other.loc[later, column] * 3.0
    regime = RegimeConfig.of({"kind": kind})
    original, perturbed = regime.labels(bars), regime.labels(changed)
    truncated = regime.labels(bars.iloc[: t + 1])
    np.testing.assert_array_equal(perturbed.iloc[: t + 1], original.iloc[: t + 1])
    np.testing.assert_array_equal(truncated, original.iloc[: t + 1])
    assert not np.array_equal(perturbed.iloc[t + 1 :], original.iloc[t + 1 :])


def test_regime_labels_and_their_warm_up():
    bars = random_walk(n=800)
    volatility = RegimeConfig.of({"kind": "volatility", "buckets": 4})
    labels = volatility.labels(bars)
    warmup = volatility.warmup()
    assert warmup == 20 + 250 - 1 and labels.name == "regime:volatility_20"
    assert labels.iloc[:warmup].isna().all() and labels.iloc[warmup:].notna().all()
    assert set(labels.dropna()) == {0, 1, 2, 3}
    std = np.log(bars["close"]).diff().rolling(20).std()
    assert std[labels == 0].mean() < std[labels == 3].mean()  # 0 is the calmest

    # Up for 60 bars, then down for 20: the trend regime reads the close only.
    close = np.concatenate([np.linspace(100, 150, 60), np.linspace(150, 120, 20)])
    rising = pd.DataFrame({"close": close}, index=pd.date_range("2024-01-01", periods=80, tz="UTC"))
    trend = RegimeConfig.of({"kind": "trend", "window": 10, "lookback": 3}).labels(rising)
    assert trend.iloc[:12].isna().all()
    assert (trend.iloc[12:60] == 1).all() and (trend.iloc[-5:] == 0).all()


@functools.cache
def regime_bars(seed: int = 9, block: int = 200, n: int = 1800) -> pd.DataFrame:
    """Returns whose AR(1) coefficient flips with volatility: +0.7 in calm blocks, -0.7 in wild ones."""
    rng = np.random.default_rng(seed)
    wild = (np.arange(n) // block) % 2 == 1
    phi = np.where(wild, -0.7, 0.7)
    noise = rng.normal(0.0, 1.0, n) * np.where(wild, 0.015, 0.006)
    returns = np.empty(n)
    returns[0] = noise[0]
    for t in range(1, n):
        returns[t] = phi[t] * returns[t - 1] + noise[t]
    return make_bars(returns, seed + 1)


def regime_spec(mode: str) -> dict[str, Any]:
    return make_spec(regime_configs=[{"kind": "volatility", "mode": mode, "buckets": 2, "min_history": 100}])


@functools.cache
def trained_per_regime(mode: str = "split"):
    return train(regime_spec(mode), regime_bars())


def test_feature_mode_adds_the_regime_column_and_scores_per_regime():
    spec = make_spec(
        regime_configs=[
            {"kind": "volatility", "mode": "feature", "buckets": 2, "min_history": 100},
            {"kind": "trend", "mode": "feature"},
        ]
    )
    bars = regime_bars()
    result = train(spec, bars)
    dataset = build_dataset(bars, spec)
    assert list(dataset.X_test.columns) == [*DEFAULT_FEATURES, "regime:volatility_20", "regime:trend_50"]
    assert {"regime:volatility_20", "regime:trend_50"} <= {i["feature"] for i in result.importances}
    per_regime = result.metrics["per_regime"]
    assert set(per_regime) == {"volatility_20", "trend_50"} and set(per_regime["volatility_20"]) == {"0", "1"}
    for scores in per_regime.values():
        assert sum(label["n"] for label in scores.values()) == TEST_WINDOW
    calm = dataset.X_test["regime:volatility_20"].to_numpy() == 0
    predicted = np.array([p["predicted"] for p in result.predictions])
    actual = dataset.y_test.to_numpy()
    assert per_regime["volatility_20"]["0"] == score(
        actual[calm], predicted[calm], actual[calm], predicted[calm]
    )


def test_split_mode_trains_one_model_per_regime_and_beats_the_pooled_model():
    split, pooled = trained_per_regime("split"), trained_per_regime("feature")
    assert split.metrics["directional_accuracy"] > pooled.metrics["directional_accuracy"] + 0.1
    # The pooled linear model follows the wild regime's sign and gets the calm one backwards.
    calm_split = split.metrics["per_regime"]["volatility_20"]["0"]["directional_accuracy"]
    calm_pooled = pooled.metrics["per_regime"]["volatility_20"]["0"]["directional_accuracy"]
    assert calm_split > 0.6 > 0.5 > calm_pooled
    assert split.importances[0]["method"] == "permutation"

    model = artifacts.load(split.artifact, split.artifact_sha256)
    assert type(model) is PerRegime and model.column == "regime:volatility_20"
    assert list(model.labels_) == [0.0, 1.0]
    slope = list(DEFAULT_FEATURES).index("ret_1")
    calm, wild = (regime_model[-1].coef_[slope] for regime_model in model.models_)
    assert calm > 0 > wild
    X_test = build_dataset(regime_bars(), regime_spec("split")).X_test
    np.testing.assert_array_equal(model.predict(X_test), [p["predicted"] for p in split.predictions])


def test_split_mode_with_a_grid_tunes_the_per_regime_model():
    spec = {**regime_spec("split"), "hyperparameters": {}, "alpha_grid": [0.01, 10000.0]}
    result = train(spec, regime_bars())
    model = artifacts.load(result.artifact, result.artifact_sha256)
    assert type(model) is PerRegime
    chosen = result.metrics["chosen_hyperparameters"]["alpha"]
    assert chosen == 0.01 and all(m[-1].alpha == chosen for m in [*model.models_, model.fallback_])


def test_a_model_file_written_before_the_regimes_module_moved_still_loads():
    """Files name each type by its module: per-regime models stored while PerRegime lived in
    workers.regimes still load, as the same type, and predict what they predicted."""
    result = trained_per_regime()
    with ZipFile(io.BytesIO(result.artifact)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["schema.json"] = files["schema.json"].replace(b'"workers.modelling.regimes"', b'"workers.regimes"')
    assert b'"workers.regimes"' in files["schema.json"]
    old = io.BytesIO()
    with ZipFile(old, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    model = artifacts.load(old.getvalue(), hashlib.sha256(old.getvalue()).hexdigest())
    assert type(model) is PerRegime
    X_test = build_dataset(regime_bars(), regime_spec("split")).X_test
    np.testing.assert_array_equal(model.predict(X_test), [p["predicted"] for p in result.predictions])


def test_per_regime_falls_back_to_the_pooled_model_for_rare_or_unseen_regimes():
    rng = np.random.default_rng(2)
    regime = np.repeat([0, 1, 2], [100, 100, 10])
    X = pd.DataFrame({"x": rng.normal(size=len(regime)), "regime": regime})
    y = X["x"] * np.array([2.0, -2.0, 5.0])[regime]
    model = PerRegime(LinearRegression(), "regime").fit(X, y)
    assert list(model.labels_) == [0, 1]  # regime 2 has fewer than 50 rows
    new = pd.DataFrame({"x": [1.0, 1.0, 1.0, 1.0], "regime": [0, 1, 2, 3]})
    predicted = model.predict(new)
    assert predicted[:2] == pytest.approx([2.0, -2.0])
    np.testing.assert_array_equal(predicted[2:], LinearRegression().fit(X, y).predict(new.iloc[2:]))


# --- forecast ---------------------------------------------------------------------------------------

FORECAST_SPECS = {
    "plain": {},
    "context": {"context_symbols": ["LEAD"]},
    "regimes": {
        "regime_configs": [
            {"kind": "volatility", "mode": "split", "buckets": 2, "min_history": 100},
            {"kind": "trend", "mode": "feature"},
        ]
    },
}


@pytest.mark.parametrize("case", list(FORECAST_SPECS))
def test_forecast_is_the_trained_models_prediction_from_the_last_bar(case):
    follower, leader = leader_and_follower()
    spec = make_spec(**FORECAST_SPECS[case])
    result = train(spec, follower, {"LEAD": leader})
    model = artifacts.load(result.artifact, result.artifact_sha256)
    for prediction in (result.predictions[0], result.predictions[-1]):
        t = follower.index.get_loc(prediction["ts"])
        # Only the bars a live call at t would have: the symbol's and the context's up to t.
        answer = forecast(spec, model, follower.iloc[: t + 1], {"LEAD": leader.loc[: follower.index[t]]})
        close = follower["close"].iloc[t]
        assert answer["as_of"] == prediction["ts"] and answer["reference_close"] == close
        assert answer["prediction"] == pytest.approx(prediction["predicted"], rel=1e-9, abs=1e-15)
        assert answer["predicted_price"] == pytest.approx(close * math.exp(answer["prediction"]), rel=1e-12)
    # From the latest bar, whose target nobody knows yet.
    latest = forecast(spec, model, follower, {"LEAD": leader})
    row = build_features(follower, spec, {"LEAD": leader}).iloc[[-1]]
    assert latest["as_of"] == follower.index[-1].to_pydatetime()
    assert latest["prediction"] == model.predict(row)[0]


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_forecast_price_is_the_target_price_the_prediction_implies(transform):
    bars = random_walk(n=900)
    spec = make_spec(target_transform=transform, train_window=400, test_window=200)
    result = train(spec, bars)
    answer = forecast(spec, artifacts.load(result.artifact, result.artifact_sha256), bars)
    if transform == "raw":  # the prediction is the price itself
        assert answer["predicted_price"] is None
    else:
        price, reference = pd.Series([answer["predicted_price"]]), pd.Series([answer["reference_close"]])
        assert TRANSFORMS[transform].apply(price, reference)[0] == pytest.approx(answer["prediction"])


def test_forecast_needs_complete_features_for_the_last_bar():
    model = artifacts.load(trained("Ridge").artifact, trained("Ridge").artifact_sha256)
    spec = make_spec(algorithm="Ridge", **SMALL)
    with pytest.raises(
        TrainingError, match=r"features of the last bar \(2015-01-30.*incomplete: .*ma_ratio_50"
    ):
        forecast(spec, model, small_bars().iloc[:30])
    with pytest.raises(TrainingError, match="no bars for SYN"):
        forecast(spec, model, small_bars().iloc[:0])


def test_permutation_importance_matches_sklearns_on_a_known_model():
    """One predict over all shuffled copies measures what sklearn's loop measures: on a linear model
    with known weights, the importance of column j is 2 * w_j**2 * var(x_j) in expectation."""
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(2000, 4)), columns=["strong", "weak", "noise", "noise2"])
    y = 3 * X["strong"] + 1 * X["weak"] + rng.normal(scale=0.5, size=2000)
    model = LinearRegression().fit(X, y)
    ours = training.permutation_importance(model, X, y, n_repeats=20)
    theirs = sklearn_permutation_importance(
        model, X, y, n_repeats=20, random_state=0, scoring="neg_mean_squared_error"
    ).importances_mean
    np.testing.assert_allclose(ours, theirs, rtol=0.1, atol=0.02)
    np.testing.assert_allclose(ours[:2], [2 * 9, 2 * 1], rtol=0.1)
    assert abs(ours[2]) < 0.02 and abs(ours[3]) < 0.02


# --- walk-forward evaluation ------------------------------------------------------------------------


def walk_forward_spec(**evaluation: Any) -> dict[str, Any]:
    return make_spec(
        execution_lag=1,
        horizon=2,
        train_window=300,
        evaluation={
            "kind": "walk_forward",
            "refit_every": 21,
            "window": "expanding",
            "start": None,
            **evaluation,
        },
    )


@pytest.mark.parametrize("window", ["expanding", "sliding"])
def test_walk_forward_refits_on_rows_whose_labels_ended_before_each_block(window):
    bars = random_walk(n=1200)
    spec = walk_forward_spec(window=window)
    dataset, walking = training.build_walk_forward(bars, spec)
    reach = 3  # execution_lag 1 + horizon 2
    where = positions(bars, walking.X.index)
    predicted = []
    for block in walking.plan:
        fitted, rows = where[block.fit], where[block.predict]
        assert fitted[-1] + reach < rows[0]  # every fitted label is known before the block's first bar
        assert block.fit.stop - block.fit.start == (300 if window == "sliding" else block.fit.stop)
        assert len(rows) <= 21
        predicted.extend(range(block.predict.start, block.predict.stop))
    # Every usable row from the first with 300 known labels before it is predicted once, in order.
    assert predicted == list(range(walking.plan[0].predict.start, len(walking.X)))
    assert walking.plan[0].fit.stop == 300 and where[walking.plan[0].predict.start] == where[299] + reach + 1
    assert dataset.X_test.index.equals(walking.X.index[walking.plan[0].predict.start :])
    assert dataset.X_train.index.equals(walking.X.index[walking.plan[-1].fit])


def test_walk_forward_predictions_are_a_plain_loop_of_refits_and_start_is_honoured():
    """The stitched predictions are what refitting Ridge by hand on each block's rows predicts; progress
    says "refit k of n"; per-year metrics cover the predicted years; `start` moves the first block."""
    bars = random_walk(n=1200)
    start = bars.index[900]
    spec = walk_forward_spec(window="sliding", start=start.isoformat())
    phases: list[str] = []
    result = train(spec, bars, progress=lambda phase, fraction: phases.append(phase))
    _, walking = training.build_walk_forward(bars, spec)
    assert walking.X.index[walking.plan[0].predict.start] == start
    by_hand = np.concatenate(
        [
            make_pipeline(StandardScaler(), Ridge(**FAST_HYPERPARAMETERS["Ridge"]))
            .fit(walking.X.iloc[block.fit], walking.y.iloc[block.fit])
            .predict(walking.X.iloc[block.predict])
            for block in walking.plan
        ]
    )
    np.testing.assert_allclose(result.series["predicted"], by_hand, rtol=1e-10, atol=1e-12)
    n = len(walking.plan)
    assert [p for p in phases if p.startswith("refit")] == [f"refit {k} of {n}" for k in range(1, n + 1)]
    assert result.predictions == [] and len(result.series["ts"]) == result.metrics["n"] == len(by_hand)
    assert result.metrics["evaluation"] == {
        "kind": "walk_forward",
        "refit_every": 21,
        "window": "sliding",
        "refits": n,
        "first_fit_size": 300,
    }
    years = {str(ts.year) for ts in result.series["ts"]}
    assert set(result.metrics["per_year"]) == years
    assert sum(year["n"] for year in result.metrics["per_year"].values()) == result.metrics["n"]


def test_walk_forward_re_tunes_a_grid_at_each_refit(monkeypatch):
    searches = []
    real = training.GridSearchCV

    def counting(*args, **kwargs):
        searches.append(kwargs.get("cv"))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "GridSearchCV", counting)
    bars = random_walk(n=900)
    spec = {**walk_forward_spec(refit_every=100), "algorithm": "Ridge", "alpha_grid": [0.1, 10.0]}
    spec["hyperparameters"] = {}
    result = train(spec, bars)
    refits = result.metrics["evaluation"]["refits"]
    assert len(searches) == spec["cv_folds"] + refits  # every CV fold, then every refit
    assert result.metrics["chosen_hyperparameters"]["alpha"] in (0.1, 10.0)


def test_too_short_a_history_to_walk_forward_is_a_training_error():
    with pytest.raises(TrainingError, match="to walk forward"):
        train(walk_forward_spec(), random_walk(n=250))


# --- the lockbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evaluation", [None, {"kind": "walk_forward", "refit_every": 50, "window": "sliding"}]
)
def test_training_never_sees_the_lockbox(evaluation):
    """Whatever the bars from lockbox_start on hold, the trained model, its metrics and its predictions
    are the same: training truncates the bars there, labels included."""
    bars = random_walk(n=1400)
    lockbox_start = bars.index[1200]
    spec = make_spec(
        execution_lag=1, train_window=400, test_window=100, lockbox_start=lockbox_start.isoformat()
    )
    if evaluation:
        spec["evaluation"] = evaluation
    scrambled = bars.copy()
    scrambled.loc[scrambled.index >= lockbox_start, ["open", "high", "low", "close"]] *= 3.0
    one, other = train(spec, bars), train(spec, scrambled)
    assert one.metrics == other.metrics and one.importances == other.importances
    assert one.predictions == other.predictions and one.series == other.series
    last = (one.series["ts"] if evaluation else [p["ts"] for p in one.predictions])[-1]
    assert last < lockbox_start.to_pydatetime()
    assert training.training_end(spec) < lockbox_start.to_pydatetime()


def test_the_lockbox_predictions_start_at_lockbox_start_and_score_what_is_known():
    bars = ar1(phi=0.6, n=1400)
    lockbox_start = bars.index[1200]
    spec = make_spec(
        execution_lag=1, train_window=400, test_window=100, lockbox_start=lockbox_start.isoformat()
    )
    result = train(spec, bars)
    model = artifacts.load(result.artifact, result.artifact_sha256)
    predictions = training.lockbox_predictions(spec, model, bars)
    assert predictions.index[0] == lockbox_start and predictions.index[-1] == bars.index[-1]
    assert predictions["actual"].isna().sum() == 2  # the last execution_lag + horizon bars: not known yet
    scores = training.lockbox_scores(spec, predictions, bars)
    assert scores["n"] == len(predictions) - 2 and scores["start"] == lockbox_start.isoformat()
    assert scores["directional_accuracy"] > 0.5  # an AR(1) keeps its skill out of sample
