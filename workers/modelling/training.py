"""Training one spec: dataset without leakage, time-series CV with a gap, nested grid search, one model
per regime if asked, held-out scoring; and the live forecast of a trained model.

Pure computation on DataFrames of bars: no database here, so it is the same code in the worker's
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
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from queue_app.errors import SfqError
from queue_app.stats import finite
from workers.modelling import artifacts
from workers.modelling.algorithms import ALGORITHMS, SEED
from workers.modelling.evaluation import Block, Evaluation, blocks, walk_forward
from workers.modelling.features import aligned_features, compute_features, lookback
from workers.modelling.regimes import PerRegime, RegimeConfig
from workers.modelling.splits import SPLITTERS, Splitter, TooFewRows

WARMUP_BARS = 250  # enough history for the longest feature window (ma_ratio_200)
GRIDS = {"alpha_grid": "alpha", "l1_ratio_grid": "l1_ratio"}  # spec field: the estimator parameter it tunes
INNER_FOLDS = 3  # the grid search's time-series CV, inside the rows being fitted


# Where each phase starts, as a share of a training's work (for progress bars; measured roughly on the
# demo's models: cross-validation dominates).
LOADED, CV_START, FINAL_FIT, EVALUATION, IMPORTANCE, SAVING = 0.05, 0.1, 0.7, 0.85, 0.9, 0.95


class TrainingError(SfqError):
    """A deterministic failure (no data, too little data): the model fails at once with this message."""


@dataclass(frozen=True)
class Transform:
    """The target: `apply(future, reference)`, where reference is the entry close (`label`); `change`
    says which way the target moved from it, for directional accuracy; `price(prediction, reference)` is
    the price a prediction implies (None: the prediction is a price)."""

    apply: Callable[[pd.Series, pd.Series], pd.Series]
    change: Callable[[np.ndarray, np.ndarray], np.ndarray]
    price: Callable[[float, float], float] | None


def _relative(values: np.ndarray, _reference: np.ndarray) -> np.ndarray:
    return values


# The prices a target may be (a spec's target_col); the database checks requests against them, and against
# TRANSFORMS' names (sfq_target_columns(), sfq_target_transforms()).
TARGET_COLUMNS = ("open", "high", "low", "close")

TRANSFORMS: dict[str, Transform] = {
    "log_return": Transform(
        lambda future, reference: np.log(future / reference),
        _relative,
        lambda prediction, reference: reference * math.exp(prediction),
    ),
    "pct_change": Transform(
        lambda future, reference: future / reference - 1.0,
        _relative,
        lambda prediction, reference: reference * (1.0 + prediction),
    ),
    "diff": Transform(
        lambda future, reference: future - reference,
        _relative,
        lambda prediction, reference: reference + prediction,
    ),
    "raw": Transform(lambda future, _reference: future, lambda values, reference: values - reference, None),
}


@dataclass
class Dataset:
    X_train: pd.DataFrame
    y_train: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    reference_train: pd.Series  # the entry close of each row, to read direction off a raw level
    reference_test: pd.Series


@dataclass
class WalkForward:
    """Every usable row's features and label, and the refits over them (evaluation.blocks)."""

    X: pd.DataFrame
    y: pd.Series
    plan: list[Block]


@dataclass
class TrainingResult:
    metrics: dict[str, Any]
    fold_metrics: list[dict[str, Any]]
    importances: list[dict[str, Any]]
    predictions: list[dict[str, Any]]  # held out: one row per bar (model_predictions)
    artifact: bytes
    artifact_sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    # Walk-forward: the stitched out-of-sample predictions as arrays, stored compactly
    # (model_prediction_series): {"ts": [...], "predicted": [...], "actual": [...]}.
    series: dict[str, list[Any]] | None = None


def _regimes(spec: dict[str, Any]) -> list[RegimeConfig]:
    return [RegimeConfig.of(config) for config in spec["regime_configs"]]


def execution_lag(spec: dict[str, Any]) -> int:
    """Bars from the signal's close to the entry's close. A spec written before the field existed
    (spec_version 1) measured its label from the signal's own close: a lag of 0."""
    return spec.get("execution_lag", 0)


def label_reach(spec: dict[str, Any]) -> int:
    """How many bars past the signal its label looks: execution_lag + horizon. The gap between the
    rows a model is fitted on and the rows it is scored on, so that no fitted label overlaps a scored one."""
    return execution_lag(spec) + spec["horizon"]


def label(bars: pd.DataFrame, spec: dict[str, Any]) -> tuple[pd.Series, pd.Series]:
    """The target at each signal bar t and its entry price: target_col at t + execution_lag + horizon
    against the close at t + execution_lag (the entry), in the spec's transform; NaN where the bars end
    first. The one definition of what a model predicts: the backtest trades exactly this return."""
    lag = execution_lag(spec)
    entry = bars["close"].shift(-lag)
    future = bars[spec["target_col"]].shift(-(lag + spec["horizon"]))
    return TRANSFORMS[spec["target_transform"]].apply(future, entry), entry


def feature_lookback(spec: dict[str, Any]) -> int:
    """The most bars before t that row t's features depend on: the spec's features (on its symbol and
    its context symbols alike) and its regimes' windows (a trend regime's lookback added; a volatility
    regime's percentile rank against all its past is counted by its window only)."""
    windows = [regime.settings["window"] + regime.settings.get("lookback", 0) for regime in _regimes(spec)]
    return max([lookback(spec["features"]), *windows])


def before_lockbox(bars: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """The bars before the spec's lockbox_start (all of them without a lockbox): what training, scoring
    and every backtest but the lockbox's own may see."""
    if not spec.get("lockbox_start"):
        return bars
    start = pd.Timestamp(spec["lockbox_start"])
    if bars.index.tz is None:
        start = start.tz_convert("UTC").tz_localize(None)
    return bars.loc[bars.index < start]


def training_end(spec: dict[str, Any]) -> Any:
    """The last instant whose bars training may load: data_end, or just before lockbox_start."""
    if not spec.get("lockbox_start"):
        return spec["data_end"]
    return (pd.Timestamp(spec["lockbox_start"]) - pd.Timedelta(microseconds=1)).to_pydatetime()


def lockbox_predictions(
    spec: dict[str, Any],
    model: BaseEstimator,
    bars: pd.DataFrame,
    context: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The trained model's predictions at every bar from lockbox_start whose features are complete, with
    its label where the bars (up to data_end) already hold it: columns predicted, actual (NaN when not
    yet known), index ts. Features use the whole history before each bar, as in training."""
    features = build_features(bars, spec, context)
    target, _ = label(bars, spec)
    start = pd.Timestamp(spec["lockbox_start"])
    rows = features[(features.index >= start) & features.notna().all(axis=1)]
    if rows.empty:
        raise TrainingError(f"no bar of the lockbox (from {spec['lockbox_start']}) to predict")
    return pd.DataFrame(
        {"predicted": model.predict(rows), "actual": target.reindex(rows.index)}, index=rows.index
    )


def lockbox_scores(spec: dict[str, Any], predictions: pd.DataFrame, bars: pd.DataFrame) -> dict[str, Any]:
    """The held-out scores of the lockbox's predictions whose label is known."""
    known = predictions.dropna()
    if known.empty:
        return {"n": 0}
    _, entry = label(bars, spec)
    transform = TRANSFORMS[spec["target_transform"]]
    reference = entry.reindex(known.index).to_numpy()
    return {
        **_scores(transform, known["actual"].to_numpy(), known["predicted"].to_numpy(), reference),
        "start": known.index[0].isoformat(),
        "end": known.index[-1].isoformat(),
    }


def bars_needed(spec: dict[str, Any]) -> int | None:
    """How many of the latest bars a spec can use (of its symbol and of each context symbol): warm-up of
    the features and regimes, training, gap, test and the label's reach; None (every bar) for a
    walk-forward evaluation, which runs over the whole history."""
    if Evaluation.of(spec).kind == "walk_forward":
        return None
    warmup = max([WARMUP_BARS, *(regime.warmup() for regime in _regimes(spec))])
    return warmup + spec["train_window"] + 2 * label_reach(spec) + spec["test_window"]


def _no_bars(spec: dict[str, Any], until: Any) -> TrainingError:
    return TrainingError(
        f"no bars for {spec['symbol']} ({spec['timeframe']}) up to {until or 'now'}; "
        f"import some with `sfq bars import FILE.csv --symbol {spec['symbol']}`"
    )


def build_features(
    bars: pd.DataFrame, spec: dict[str, Any], context: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """Every column a model of `spec` sees, indexed like `bars`, in training's order: the spec's features
    on the symbol's own bars; the same features on each context symbol's bars ("SPY/ret_1"), taken at t
    from the context's last bar at or before t, never a later one; then the regime labels
    ("regime:volatility_20"). Row t uses bars <= t only; warm-up rows hold NaN."""
    own = compute_features(bars, spec["features"])
    regimes = _regimes(spec)
    labels = [regime.labels(bars) for regime in regimes]
    if len({regime.column for regime in regimes}) < len(regimes):
        raise TrainingError(
            "two regime configs give the same column ("
            + ", ".join(regime.column for regime in regimes)
            + "): give them different windows"
        )
    complete = pd.concat([own, *labels], axis=1).notna().all(axis=1)
    first = bars.index[complete.to_numpy().argmax()] if complete.any() else bars.index[-1]
    others = []
    for symbol in spec["context_symbols"]:
        other = (context or {}).get(symbol)
        if other is None or other.empty or other.index[0] > first:
            raise TrainingError(
                f"context symbol {symbol} has no {spec['timeframe']} bars up to {first.isoformat()} "
                f"(where {spec['symbol']}'s own features are first complete); "
                f"import some with `sfq bars import FILE.csv --symbol {symbol}`"
            )
        others.append(aligned_features(other, spec["features"], bars.index, prefix=f"{symbol}/"))
    return pd.concat([own, *others, *labels], axis=1)


def build_dataset(
    bars: pd.DataFrame, spec: dict[str, Any], context: dict[str, pd.DataFrame] | None = None
) -> Dataset:
    """Features at t from bars <= t (`build_features`); target at t: `label` (target_col at
    t + execution_lag + horizon against the entry close at t + execution_lag); the last test_window rows
    held out.

    A gap of `label_reach` rows separates training from test, so no training label overlaps the test
    period.
    """
    if bars.empty:
        raise _no_bars(spec, spec["data_end"])
    reach = label_reach(spec)
    if spec["target_col"] not in TARGET_COLUMNS:
        raise TrainingError(f"target_col: {spec['target_col']!r} is not one of {', '.join(TARGET_COLUMNS)}")
    features = build_features(bars, spec, context)
    target, reference = label(bars, spec)
    usable = features.notna().all(axis=1) & target.notna()
    X, y, reference = features[usable], target[usable], reference[usable]

    needed = spec["train_window"] + reach + spec["test_window"]
    if len(X) < needed:
        # Name the columns that are missing most in the rows the model would need (a context symbol
        # without volume, or whose bars stop early, empties its own columns, not the symbol's).
        missing = features.iloc[-(needed + reach) :].isna().sum()
        worst = missing[missing > 0].sort_values(ascending=False).head(3)
        why = "; most missing: " + ", ".join(f"{name} ({count} rows)" for name, count in worst.items())
        raise TrainingError(
            f"not enough bars for {spec['symbol']} ({spec['timeframe']}): {len(X)} usable rows after feature "
            f"warm-up, but train_window + execution_lag + horizon + test_window = {needed}"
            + (why if len(worst) else "")
        )
    test_start = len(X) - spec["test_window"]
    train_end = test_start - reach
    train = slice(train_end - spec["train_window"], train_end)
    return Dataset(
        X.iloc[train],
        y.iloc[train],
        X.iloc[test_start:],
        y.iloc[test_start:],
        reference.iloc[train],
        reference.iloc[test_start:],
    )


def build_walk_forward(
    bars: pd.DataFrame, spec: dict[str, Any], context: dict[str, pd.DataFrame] | None = None
) -> tuple[Dataset, WalkForward]:
    """The features and labels of every bar, computed once for the whole history, and the refits of a
    walk-forward evaluation (`evaluation.blocks`). The Dataset's training rows are the last refit's
    (the final model's, which cross-validation scores); its test rows every predicted row."""
    if bars.empty:
        raise _no_bars(spec, spec["data_end"])
    features = build_features(bars, spec, context)
    target, reference = label(bars, spec)
    usable = features.notna().all(axis=1) & target.notna()
    X, y, reference = features[usable], target[usable], reference[usable]
    evaluation = Evaluation.of(spec)
    positions = bars.index.get_indexer(X.index)
    plan = blocks(positions, X.index, evaluation, spec["train_window"], label_reach(spec))
    if not plan:
        raise TrainingError(
            f"not enough bars for {spec['symbol']} ({spec['timeframe']}) to walk forward: {len(X)} usable "
            f"rows after feature warm-up, but the first refit needs train_window + execution_lag + horizon "
            f"= {spec['train_window'] + label_reach(spec)} rows before the first prediction"
            + (f" at or after {evaluation.start.isoformat()}" if evaluation.start is not None else "")
        )
    last, tested = plan[-1].fit, slice(plan[0].predict.start, plan[-1].predict.stop)
    dataset = Dataset(
        X.iloc[last],
        y.iloc[last],
        X.iloc[tested],
        y.iloc[tested],
        reference.iloc[last],
        reference.iloc[tested],
    )
    return dataset, WalkForward(X, y, plan)


def _mean(values) -> float | None:
    present = [value for value in values if value is not None]
    return finite(float(np.mean(present))) if present else None


def score(actual: np.ndarray, predicted: np.ndarray, actual_change: np.ndarray, predicted_change: np.ndarray):
    """Errors on the target; R2 and IC on the change from the close at t, so that a `raw` level target is
    not credited for the level's own persistence (any price "predicts" tomorrow's price)."""
    moved = actual_change != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = spearmanr(predicted_change, actual_change).statistic if np.ptp(predicted_change) > 0 else np.nan
    return {
        "rmse": finite(math.sqrt(mean_squared_error(actual, predicted))),
        "mae": finite(mean_absolute_error(actual, predicted)),
        "r2": finite(r2_score(actual_change, predicted_change)) if len(actual) > 1 else None,  # undefined
        "directional_accuracy": finite(
            np.mean(np.sign(predicted_change[moved]) == np.sign(actual_change[moved]))
            if moved.any()
            else np.nan
        ),
        # What always guessing the more common direction scores: a high or low target moves one way on
        # most bars (tomorrow's high is usually above today's close), so accuracy means little without it.
        "directional_base_rate": finite(
            max(np.mean(actual_change[moved] > 0), np.mean(actual_change[moved] < 0))
            if moved.any()
            else np.nan
        ),
        "ic": finite(ic),
        "n": len(actual),
    }


def _importances(model: BaseEstimator, dataset: Dataset) -> tuple[np.ndarray, str]:
    """Impurity for trees, |coefficient| for linear models; permutation importance on the test window for
    the rest (HistGradientBoosting, and one model per regime, whose regimes' models differ)."""
    estimator = model[-1] if isinstance(model, Pipeline) else model
    if hasattr(estimator, "feature_importances_"):
        return np.asarray(estimator.feature_importances_), "impurity"
    if hasattr(estimator, "coef_"):
        return np.abs(np.ravel(estimator.coef_)), "abs_coefficient"
    return permutation_importance(model, dataset.X_test, dataset.y_test), "permutation"


def permutation_importance(
    model: BaseEstimator, X: pd.DataFrame, y: pd.Series, n_repeats: int = 5
) -> np.ndarray:
    """Mean increase of the squared error when one column is shuffled (`n_repeats` shuffles each), as
    sklearn.inspection.permutation_importance computes it, but with one predict call over all the
    shuffled copies: on a few hundred test rows, sklearn's call per shuffle spent most of its time in
    per-call overhead (a quarter of a HistGradientBoosting job). Models predict row by row, so stacking
    the copies changes nothing."""
    rng = np.random.default_rng(SEED)
    n, p = X.shape
    rows = X.to_numpy()
    copies = np.repeat(rows[None], p * n_repeats, axis=0)  # copy k shuffles column k // n_repeats
    for k in range(p * n_repeats):
        copies[k, :, k // n_repeats] = rows[rng.permutation(n), k // n_repeats]
    stacked = pd.DataFrame(copies.reshape(-1, p), columns=X.columns)
    actual = y.to_numpy()
    shuffled_mse = ((model.predict(stacked).reshape(p * n_repeats, n) - actual) ** 2).mean(axis=1)
    base_mse = ((model.predict(X) - actual) ** 2).mean()
    return (shuffled_mse.reshape(p, n_repeats) - base_mse).mean(axis=1)


def _splitter(strategy: str, n_splits: int, gap: int, n_rows: int, what: str, lookback: int = 0) -> Splitter:
    """The strategy's splitter for `n_rows` rows, `gap` rows between fitted and scored rows (the label's
    reach), `lookback` the features' (the purged k-fold's embargo); a window too short for it is the
    spec's fault."""
    try:
        return SPLITTERS[strategy](n_splits, gap, n_rows, lookback)
    except TooFewRows as error:
        raise TrainingError(f"{what}: {error}") from None


def _model(spec: dict[str, Any]) -> tuple[BaseEstimator, dict[str, list[float]]]:
    """The spec's unfitted model (its pipeline, wrapped in one model per regime for a "split" regime)
    and the grid to tune it over, by parameter path ({} when the spec has no grid)."""
    pipeline = ALGORITHMS[spec["algorithm"]].build(spec["hyperparameters"])
    model, path = pipeline, f"{pipeline.steps[-1][0]}__"
    for regime in _regimes(spec):
        if regime.mode == "split":
            model, path = PerRegime(pipeline, regime.column), f"estimator__{path}"
    return model, {path + param: spec[field] for field, param in GRIDS.items() if spec[field]}


def _fit(
    model: BaseEstimator, grid: dict[str, list[float]], X: pd.DataFrame, y: pd.Series, gap: int
) -> tuple[BaseEstimator, dict[str, float]]:
    """Fit a fresh copy of `model`; with a grid, choose its values by an inner time-series CV on these rows
    alone (nested inside the outer folds, so no fold's score saw the rows it scores) and refit on all of
    them. Returns the fitted model (never the search) and the chosen values by parameter name."""
    if not grid:
        return clone(model).fit(X, y), {}
    inner = _splitter("expanding", INNER_FOLDS, gap, len(X), "the grid search's inner CV")
    search = GridSearchCV(
        model, grid, scoring="neg_mean_squared_error", cv=inner, refit=True, error_score="raise"
    ).fit(X, y)
    chosen = {path.rsplit("__", 1)[1]: float(value) for path, value in search.best_params_.items()}
    return search.best_estimator_, chosen


def _scores(transform: Transform, actual: np.ndarray, predicted: np.ndarray, reference: np.ndarray):
    return score(
        actual, predicted, transform.change(actual, reference), transform.change(predicted, reference)
    )


def _per_regime(
    transform: Transform, labels: np.ndarray, actual: np.ndarray, predicted: np.ndarray, reference: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Held-out scores by regime label, so a model that only works in one regime shows it."""
    scores = {}
    for label in np.unique(labels):
        rows = labels == label
        scores[str(int(label))] = _scores(transform, actual[rows], predicted[rows], reference[rows])
    return scores


class _Clock:
    """Seconds per phase of a training, each from the end of the one before (TrainingResult.timings)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self._last, 4)
        self._last = now


def train(
    spec: dict[str, Any],
    bars: pd.DataFrame,
    context: dict[str, pd.DataFrame] | None = None,
    progress: Callable[[str, float], None] = lambda phase, fraction: None,
    on_fold: Callable[[dict[str, Any]], None] = lambda fold: None,
) -> TrainingResult:
    """Train and score one spec on its bars (and its context symbols' bars, by symbol). Deterministic:
    same spec and bars, same metrics. `progress(phase, fraction)` is told each phase as it starts, with
    the share of the work done so far (one step per CV fold, and per refit of a walk-forward).

    The phases: the dataset; cross-validation on the training window; the final fit on all of it and
    its evaluation on the held-out window, or a walk-forward's refits and the evaluation of their
    stitched predictions; feature importances; the model file."""
    clock = _Clock()
    transform = TRANSFORMS[spec["target_transform"]]
    bars = before_lockbox(bars, spec)
    context = {symbol: before_lockbox(frame, spec) for symbol, frame in (context or {}).items()}
    walking = None
    if Evaluation.of(spec).kind == "walk_forward":
        dataset, walking = build_walk_forward(bars, spec, context)
    else:
        dataset = build_dataset(bars, spec, context)
    model, grid = _model(spec)
    clock.done("features")

    folds = _cross_validate(spec, model, grid, dataset, transform, progress, on_fold)
    clock.done("cv")

    def fit(X: pd.DataFrame, y: pd.Series) -> tuple[BaseEstimator, dict[str, float]]:
        return _fit(model, grid, X, y, label_reach(spec))

    if walking is None:
        progress("final fit", FINAL_FIT)
        model, chosen = fit(dataset.X_train, dataset.y_train)
        predicted = model.predict(dataset.X_test)
    else:
        predicted, model, chosen = walk_forward(
            walking.X,
            walking.y,
            walking.plan,
            fit,
            lambda k, n: progress(f"refit {k} of {n}", FINAL_FIT + (EVALUATION - FINAL_FIT) * (k - 1) / n),
        )
    clock.done("fit")
    progress("evaluation", EVALUATION)

    metrics = _evaluate(spec, transform, dataset, predicted, folds, chosen if grid else None)
    if walking is not None:
        metrics |= _walk_forward_metrics(spec, transform, dataset, predicted, walking)
    clock.done("evaluate")
    progress("importance", IMPORTANCE)

    importances = _ranked_importances(model, dataset)
    clock.done("importance")
    progress("saving", SAVING)

    blob = artifacts.dump(model)
    clock.done("serialize")
    stamps, actual = dataset.X_test.index, dataset.y_test.to_numpy()
    return TrainingResult(
        metrics=metrics,
        fold_metrics=folds,
        importances=importances,
        predictions=[]
        if walking
        else [
            {"ts": ts.to_pydatetime(), "predicted": float(p), "actual": float(a)}
            for ts, p, a in zip(stamps, predicted, actual, strict=True)
        ],
        artifact=blob,
        artifact_sha256=hashlib.sha256(blob).hexdigest(),
        timings=clock.timings,
        series={
            "ts": list(stamps.to_pydatetime()),
            "predicted": predicted.tolist(),
            "actual": actual.tolist(),
        }
        if walking
        else None,
    )


def _walk_forward_metrics(
    spec: dict[str, Any], transform: Transform, dataset: Dataset, predicted: np.ndarray, walking: WalkForward
) -> dict[str, Any]:
    """What a walk-forward adds to the metrics of its stitched predictions: its settings, how many
    refits, and the same scores per calendar year (UTC) of the predicted bars."""
    evaluation = Evaluation.of(spec)
    actual, reference = dataset.y_test.to_numpy(), dataset.reference_test.to_numpy()
    years = dataset.X_test.index.year
    return {
        "evaluation": {
            "kind": "walk_forward",
            "refit_every": evaluation.refit_every,
            "window": evaluation.window,
            "refits": len(walking.plan),
            "first_fit_size": walking.plan[0].fit.stop - walking.plan[0].fit.start,
        },
        "per_year": {
            str(year): _scores(
                transform, actual[years == year], predicted[years == year], reference[years == year]
            )
            for year in np.unique(years)
        },
    }


def _cross_validate(
    spec: dict[str, Any],
    model: BaseEstimator,
    grid: dict[str, list[float]],
    dataset: Dataset,
    transform: Transform,
    progress: Callable[[str, float], None],
    on_fold: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Each fold of the spec's CV over the training window, fitted on its rows (with the nested grid
    search when there is a grid) and scored on its scored rows; `progress` is told as each fold starts,
    `on_fold` given each fold's scores as it ends (a study's pruner may stop the training there)."""
    X, y, gap = dataset.X_train, dataset.y_train, label_reach(spec)
    reference = dataset.reference_train.to_numpy()
    splitter = _splitter(
        spec["cv_strategy"], spec["cv_folds"], gap, len(X), "cross-validation", feature_lookback(spec)
    )
    n_folds = splitter.get_n_splits(X)
    folds = []
    for fold, (fit_rows, score_rows) in enumerate(splitter.split(X), start=1):
        progress(f"fold {fold} of {n_folds}", CV_START + (FINAL_FIT - CV_START) * (fold - 1) / n_folds)
        fitted, chosen = _fit(model, grid, X.iloc[fit_rows], y.iloc[fit_rows], gap)
        folds.append(
            {
                "fold": fold,
                "train_size": len(fit_rows),
                "train_start": X.index[fit_rows[0]].isoformat(),
                "train_end": X.index[fit_rows[-1]].isoformat(),
                "scored_start": X.index[score_rows[0]].isoformat(),
                "scored_end": X.index[score_rows[-1]].isoformat(),
                **({"chosen_hyperparameters": chosen} if grid else {}),
                **_scores(
                    transform,
                    y.iloc[score_rows].to_numpy(),
                    fitted.predict(X.iloc[score_rows]),
                    reference[score_rows],
                ),
            }
        )
        on_fold(folds[-1])
    return folds


def _evaluate(
    spec: dict[str, Any],
    transform: Transform,
    dataset: Dataset,
    predicted: np.ndarray,
    folds: list[dict[str, Any]],
    chosen: dict[str, float] | None,
) -> dict[str, Any]:
    """The held-out metrics of the final model's `predicted` test window, beside the naive forecast's,
    the folds' means, the windows, the grid's chosen values (None: no grid) and the scores by regime."""
    X = dataset.X_train
    actual = dataset.y_test.to_numpy()
    reference = dataset.reference_test.to_numpy()
    naive = transform.apply(dataset.reference_test, dataset.reference_test).to_numpy()  # "no change" forecast
    metrics = {
        **_scores(transform, actual, predicted, reference),
        "naive_rmse": finite(math.sqrt(mean_squared_error(actual, naive))),
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
    if chosen is not None:
        metrics["chosen_hyperparameters"] = chosen
    if regimes := _regimes(spec):
        metrics["per_regime"] = {
            regime.name: _per_regime(
                transform, dataset.X_test[regime.column].to_numpy(), actual, predicted, reference
            )
            for regime in regimes
        }
    return metrics


def _ranked_importances(model: BaseEstimator, dataset: Dataset) -> list[dict[str, Any]]:
    """Every feature's importance to the final model, most important first (rank 1)."""
    values, method = _importances(model, dataset)
    order = np.argsort(-values, kind="stable")
    columns = dataset.X_train.columns
    return [
        {"feature": columns[i], "importance": float(values[i]), "rank": rank, "method": method}
        for rank, i in enumerate(order, start=1)
    ]


def forecast(
    spec: dict[str, Any],
    model: BaseEstimator,
    bars: pd.DataFrame,
    context: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """The trained model's prediction from the last bar of `bars`, for the live call: that bar's feature
    row built exactly as in training (`build_features`), its target being unknown yet. `prediction` is
    in the target's units, a return from the entry close at t + execution_lag to target_col at
    t + execution_lag + horizon; `predicted_price` is the target_col price it implies, applied to the
    latest close (the entry close is not known yet when execution_lag > 0; None for a `raw` target,
    whose prediction is that price)."""
    if bars.empty:
        raise _no_bars(spec, None)
    row = build_features(bars, spec, context).iloc[[-1]]
    as_of = row.index[0]
    if missing := [column for column in row.columns if pd.isna(row[column].iloc[0])]:
        raise TrainingError(
            f"the features of the last bar ({as_of.isoformat()}) are incomplete: {', '.join(missing)} "
            f"need more history than the {len(bars)} bars given"
        )
    prediction = float(model.predict(row)[0])
    reference = float(bars["close"].iloc[-1])
    price = TRANSFORMS[spec["target_transform"]].price
    return {
        "as_of": as_of.to_pydatetime(),
        "prediction": prediction,
        "reference_close": reference,
        "predicted_price": price(prediction, reference) if price else None,
    }
