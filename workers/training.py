"""Training one spec: dataset without leakage, expanding time-series CV with a gap, held-out scoring.

Pure computation on a DataFrame of bars: no database here, so it is the same code in the worker's
training process, in tests and in benchmarks.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.inspection import permutation_importance
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import TimeSeriesSplit

from workers import artifacts
from workers.algorithms import ALGORITHMS, SEED
from workers.features import compute_features

WARMUP_BARS = 250  # enough history for the longest feature window (ma_ratio_200)


class TrainingError(Exception):
    """A deterministic failure (no data, too little data): the model fails at once with this message."""


@dataclass(frozen=True)
class Transform:
    """The target: `apply(future, reference)`, where reference is the close at prediction time (the last
    price known then); `change` says which way the target moved from it, for directional accuracy."""

    apply: Callable[[pd.Series, pd.Series], pd.Series]
    change: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _relative(values: np.ndarray, _reference: np.ndarray) -> np.ndarray:
    return values


TRANSFORMS: dict[str, Transform] = {
    "log_return": Transform(lambda future, reference: np.log(future / reference), _relative),
    "pct_change": Transform(lambda future, reference: future / reference - 1.0, _relative),
    "diff": Transform(lambda future, reference: future - reference, _relative),
    "raw": Transform(lambda future, _reference: future, lambda values, reference: values - reference),
}


@dataclass
class Dataset:
    X_train: pd.DataFrame
    y_train: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    reference_test: pd.Series  # close at prediction time, to read direction off a raw level


@dataclass
class TrainingResult:
    metrics: dict[str, Any]
    fold_metrics: list[dict[str, Any]]
    importances: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    artifact: bytes
    artifact_sha256: str
    timings: dict[str, float] = field(default_factory=dict)


def bars_needed(spec: dict[str, Any]) -> int:
    """How many of the latest bars a spec can use: warm-up, training, gap, test and the target's horizon."""
    return WARMUP_BARS + spec["train_window"] + 2 * spec["horizon"] + spec["test_window"]


def build_dataset(bars: pd.DataFrame, spec: dict[str, Any]) -> Dataset:
    """Features at t from bars <= t; target at t: target_col at t + horizon against the close at t (the
    price known when predicting, so open/high/low targets cannot borrow the rest of bar t); the last
    test_window rows held out.

    A gap of `horizon` rows separates training from test, so no training target overlaps the test period.
    """
    if bars.empty:
        raise TrainingError(
            f"no bars for {spec['symbol']} ({spec['timeframe']}) up to {spec['data_end'] or 'now'}; "
            f"import some with `sfq bars import FILE.csv --symbol {spec['symbol']}`"
        )
    horizon = spec["horizon"]
    features = compute_features(bars, spec["features"])
    reference = bars["close"]
    target = TRANSFORMS[spec["target_transform"]].apply(bars[spec["target_col"]].shift(-horizon), reference)
    usable = features.notna().all(axis=1) & target.notna()
    X, y, reference = features[usable], target[usable], reference[usable]

    needed = spec["train_window"] + horizon + spec["test_window"]
    if len(X) < needed:
        raise TrainingError(
            f"not enough bars for {spec['symbol']} ({spec['timeframe']}): {len(X)} usable rows after feature "
            f"warm-up, but train_window + horizon + test_window = {needed}"
        )
    test_start = len(X) - spec["test_window"]
    train_end = test_start - horizon
    train = slice(train_end - spec["train_window"], train_end)
    return Dataset(
        X.iloc[train], y.iloc[train], X.iloc[test_start:], y.iloc[test_start:], reference.iloc[test_start:]
    )


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _mean(values) -> float | None:
    present = [value for value in values if value is not None]
    return _finite(float(np.mean(present))) if present else None


def score(actual: np.ndarray, predicted: np.ndarray, actual_change: np.ndarray, predicted_change: np.ndarray):
    """Errors on the target; R2 and IC on the change from the close at t, so that a `raw` level target is
    not credited for the level's own persistence (any price "predicts" tomorrow's price)."""
    moved = actual_change != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = spearmanr(predicted_change, actual_change).statistic if np.ptp(predicted_change) > 0 else np.nan
    return {
        "rmse": _finite(math.sqrt(mean_squared_error(actual, predicted))),
        "mae": _finite(mean_absolute_error(actual, predicted)),
        "r2": _finite(r2_score(actual_change, predicted_change)),
        "directional_accuracy": _finite(
            np.mean(np.sign(predicted_change[moved]) == np.sign(actual_change[moved]))
            if moved.any()
            else np.nan
        ),
        "ic": _finite(ic),
        "n": len(actual),
    }


def _importances(pipeline, dataset: Dataset) -> tuple[np.ndarray, str]:
    estimator = pipeline[-1]
    if hasattr(estimator, "feature_importances_"):
        return np.asarray(estimator.feature_importances_), "impurity"
    if hasattr(estimator, "coef_"):
        return np.abs(np.ravel(estimator.coef_)), "abs_coefficient"
    result = permutation_importance(
        pipeline,
        dataset.X_test,
        dataset.y_test,
        n_repeats=5,
        random_state=SEED,
        scoring="neg_mean_squared_error",
    )
    return result.importances_mean, "permutation"


def train(spec: dict[str, Any], bars: pd.DataFrame, progress: Callable[[str], None] = lambda phase: None):
    """Train and score one spec on its bars. Deterministic: same spec and bars, same metrics."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now
        progress(name)

    algorithm = ALGORITHMS[spec["algorithm"]]
    transform = TRANSFORMS[spec["target_transform"]]
    dataset = build_dataset(bars, spec)
    phase_done("features")

    folds = []
    splitter = TimeSeriesSplit(n_splits=spec["cv_folds"], gap=spec["horizon"])
    X, y = dataset.X_train, dataset.y_train
    reference_train = bars["close"].reindex(X.index).to_numpy()
    for fold, (fit_rows, score_rows) in enumerate(splitter.split(X), start=1):
        model = algorithm.build(spec["hyperparameters"]).fit(X.iloc[fit_rows], y.iloc[fit_rows])
        predicted = model.predict(X.iloc[score_rows])
        actual = y.iloc[score_rows].to_numpy()
        reference = reference_train[score_rows]
        folds.append(
            {
                "fold": fold,
                "train_size": len(fit_rows),
                **score(
                    actual,
                    predicted,
                    transform.change(actual, reference),
                    transform.change(predicted, reference),
                ),
            }
        )
    phase_done("cv")

    model = algorithm.build(spec["hyperparameters"]).fit(X, y)
    phase_done("fit")

    predicted = model.predict(dataset.X_test)
    actual = dataset.y_test.to_numpy()
    reference = dataset.reference_test.to_numpy()
    held_out = score(
        actual, predicted, transform.change(actual, reference), transform.change(predicted, reference)
    )
    naive = transform.apply(dataset.reference_test, dataset.reference_test).to_numpy()  # "no change" forecast
    metrics = {
        **held_out,
        "naive_rmse": _finite(math.sqrt(mean_squared_error(actual, naive))),
        **{
            f"cv_{name}_mean": _mean(fold[name] for fold in folds)
            for name in ("rmse", "r2", "directional_accuracy", "ic")
        },
        "n_train": len(X),
        "n_test": len(actual),
        "train_start": X.index[0].isoformat(),
        "train_end": X.index[-1].isoformat(),
        "test_start": dataset.X_test.index[0].isoformat(),
        "test_end": dataset.X_test.index[-1].isoformat(),
    }
    phase_done("evaluate")

    values, method = _importances(model, dataset)
    order = np.argsort(-values, kind="stable")
    importances = [
        {"feature": X.columns[i], "importance": float(values[i]), "rank": rank, "method": method}
        for rank, i in enumerate(order, start=1)
    ]
    phase_done("importance")

    blob = artifacts.dump(model)
    phase_done("serialize")
    predictions = [
        {"ts": ts.to_pydatetime(), "predicted": float(p), "actual": float(a)}
        for ts, p, a in zip(dataset.X_test.index, predicted, actual, strict=True)
    ]
    return TrainingResult(
        metrics=metrics,
        fold_metrics=folds,
        importances=importances,
        predictions=predictions,
        artifact=blob,
        artifact_sha256=hashlib.sha256(blob).hexdigest(),
        timings=timings,
    )
