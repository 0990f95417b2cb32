"""Algorithm registry: one entry per estimator a spec may name, built the same way for every algorithm.

The database validates hyperparameters before a job exists, against a contract exported from here
(`python -m workers.modelling.contract` writes `sql/schema/registry.sql`), so a bad value is refused at
enqueue time with the field named, whichever way the request came in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sklearn.base import RegressorMixin
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from workers.modelling.registry import by_name

SEED = 0

# Parameters sfq sets itself: reproducibility (random_state), one core per worker (n_jobs),
# quiet logs (verbose), and fresh fits (warm_start, copy_X). A spec may not override them.
CONTROLLED_PARAMS: dict[str, Any] = {
    "random_state": SEED,
    "n_jobs": 1,
    "verbose": 0,
    "warm_start": False,
    "copy_X": True,
}


AUTO_EARLY_STOPPING_ROWS = 10_000  # HistGradientBoosting's early_stopping="auto" turns on above this


class TimeOrderedHistGradientBoosting(HistGradientBoostingRegressor):
    """HistGradientBoostingRegressor whose early stopping (on when early_stopping is True, or "auto"
    above 10,000 rows) is validated on the *latest* `validation_fraction` of the rows it is fitted on,
    fitted on the rows before them. scikit-learn's own validation set is a shuffled sample, so it scores
    each boosting round on rows interleaved with the fitted ones: on serially correlated bars, a leak
    that stops too late. Every other parameter means what it means in scikit-learn."""

    def fit(self, X, y, sample_weight=None):
        n = len(X)
        stopping = self.early_stopping is True or (
            self.early_stopping == "auto" and n > AUTO_EARLY_STOPPING_ROWS
        )
        if not stopping or self.validation_fraction is None:
            return super().fit(X, y, sample_weight)
        share = self.validation_fraction
        held = int(share) if share >= 1 else math.ceil(share * n)
        fitted, validated = slice(0, n - held), slice(n - held, n)
        weights = (
            {}
            if sample_weight is None
            else {"sample_weight": sample_weight[fitted], "sample_weight_val": sample_weight[validated]}
        )
        rows = X.iloc if hasattr(X, "iloc") else X
        targets = y.iloc if hasattr(y, "iloc") else y
        return super().fit(
            rows[fitted], targets[fitted], X_val=rows[validated], y_val=targets[validated], **weights
        )


@dataclass(frozen=True)
class Algorithm:
    name: str
    estimator: type[RegressorMixin]
    scaled: bool

    def build(self, hyperparameters: dict[str, Any]) -> Pipeline:
        """A pipeline ready to fit: standardised inputs for linear models, raw for trees."""
        own = self.estimator().get_params()
        controlled = {name: value for name, value in CONTROLLED_PARAMS.items() if name in own}
        estimator = self.estimator(**hyperparameters, **controlled)
        return make_pipeline(StandardScaler(), estimator) if self.scaled else make_pipeline(estimator)


ALGORITHMS: dict[str, Algorithm] = by_name(
    Algorithm("RandomForest", RandomForestRegressor, scaled=False),
    Algorithm("ExtraTrees", ExtraTreesRegressor, scaled=False),
    Algorithm("GradientBoosting", GradientBoostingRegressor, scaled=False),
    Algorithm("HistGradientBoosting", TimeOrderedHistGradientBoosting, scaled=False),
    Algorithm("ElasticNet", ElasticNet, scaled=True),
    Algorithm("Ridge", Ridge, scaled=True),
    Algorithm("Lasso", Lasso, scaled=True),
    Algorithm("LinearRegression", LinearRegression, scaled=True),
)
