"""Regime registry: market states labelled from bars at or before their row only, used as a feature
(mode "feature") or to train one model per state (mode "split", `PerRegime`).

Each kind declares its parameters once, in the contract format the database validates hyperparameters
with; `python -m workers.modelling.contract` exports them to `sfq_regimes`, where the database fills a
request's defaults from them, and the computation reads its parameters through the same declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone

from workers.modelling.registry import by_name

MIN_REGIME_ROWS = 50  # a regime with fewer training rows is predicted by the model fitted on all rows


def _integer(default: int, low: int, high: int) -> dict[str, Any]:
    return {
        "default": default,
        "rules": [{"type": "integer", "min": low, "max": high, "min_open": False, "max_open": False}],
    }


MODE = {"default": "feature", "rules": [{"type": "string", "enum": ["feature", "split"]}]}


@dataclass(frozen=True)
class Regime:
    """A kind of regime: how to label each bar, how many bars it needs first, and its parameters as the
    database validates them."""

    name: str
    description: str
    label: Callable[..., pd.Series]  # label(bars, **parameters but mode): a label per bar, NaN in warm-up
    warmup: Callable[..., int]  # warmup(**parameters but mode): leading bars without a label
    parameters: dict[str, dict[str, Any]]  # {param: {"default", "rules"}}, the arguments of `label`

    @property
    def declarations(self) -> dict[str, dict[str, Any]]:
        """Every parameter a config of this kind may set: the kind's own, and `mode`."""
        return {**self.parameters, "mode": MODE}

    def settings(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config's value of every declared parameter, its default when absent (mode excluded)."""
        return {name: config.get(name, declared["default"]) for name, declared in self.parameters.items()}


def _log_returns(bars: pd.DataFrame) -> pd.Series:
    return np.log(bars["close"] / bars["close"].shift(1))


def _volatility(bars: pd.DataFrame, window: int, buckets: int, min_history: int) -> pd.Series:
    """Bucket of the rolling volatility's percentile rank among its own values up to and including t:
    the past only, whatever comes later. 0 is the calmest bucket."""
    rank = _log_returns(bars).rolling(window).std().expanding(min_periods=min_history).rank(pct=True)
    return np.ceil(rank * buckets) - 1


def _trend(bars: pd.DataFrame, window: int, lookback: int) -> pd.Series:
    """1 when the moving average rose over the last `lookback` bars, 0 when it did not."""
    average = bars["close"].rolling(window).mean()
    slope = average - average.shift(lookback)
    return (slope > 0).astype(float).where(slope.notna())


REGIMES: dict[str, Regime] = by_name(
    Regime(
        "volatility",
        "std of 1-bar log returns over `window` bars, bucketed by its percentile rank against its own past "
        "(at least `min_history` values) into `buckets` regimes; 0 is the calmest",
        _volatility,
        lambda window, buckets, min_history: window + min_history - 1,
        {
            "window": _integer(20, 2, 1000),
            "buckets": _integer(3, 2, 5),
            "min_history": _integer(250, 20, 5000),
        },
    ),
    Regime(
        "trend",
        "1 when the `window`-bar moving average of close rose over the last `lookback` bars, else 0",
        _trend,
        lambda window, lookback: window + lookback - 1,
        {"window": _integer(50, 2, 1000), "lookback": _integer(5, 1, 250)},
    ),
)


@dataclass(frozen=True)
class RegimeConfig:
    """One entry of a spec's regime_configs, its defaults filled in."""

    kind: str
    mode: str
    settings: dict[str, Any]

    @classmethod
    def of(cls, config: dict[str, Any]) -> RegimeConfig:
        regime = REGIMES[config["kind"]]
        return cls(config["kind"], config.get("mode", MODE["default"]), regime.settings(config))

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.settings['window']}"

    @property
    def column(self) -> str:
        return f"regime:{self.name}"

    def labels(self, bars: pd.DataFrame) -> pd.Series:
        return REGIMES[self.kind].label(bars, **self.settings).rename(self.column)

    def warmup(self) -> int:
        return REGIMES[self.kind].warmup(**self.settings)


class PerRegime(RegressorMixin, BaseEstimator):
    """One clone of `estimator` per regime label found in X's `column`, fitted on that regime's rows,
    and one fitted on every row: the fallback for a regime with fewer than `min_rows` training rows or
    one never seen in training. The label column stays in X, so a row is routed at predict time too."""

    def __init__(self, estimator: Any, column: str, min_rows: int = MIN_REGIME_ROWS):
        self.estimator = estimator
        self.column = column
        self.min_rows = min_rows

    def fit(self, X: pd.DataFrame, y: pd.Series) -> PerRegime:
        labels = X[self.column].to_numpy()
        found, counts = np.unique(labels, return_counts=True)
        self.labels_ = found[counts >= self.min_rows]
        self.models_ = [
            clone(self.estimator).fit(X[labels == label], y[labels == label]) for label in self.labels_
        ]
        self.fallback_ = clone(self.estimator).fit(X, y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        labels = X[self.column].to_numpy()
        predicted = np.empty(len(X))
        routed = np.zeros(len(X), dtype=bool)
        for label, model in zip(self.labels_, self.models_, strict=True):
            rows = labels == label
            if rows.any():
                predicted[rows] = model.predict(X[rows])
                routed |= rows
        if not routed.all():
            predicted[~routed] = self.fallback_.predict(X[~routed])
        return predicted
