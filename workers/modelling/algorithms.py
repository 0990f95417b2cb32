"""Algorithm registry: one entry per estimator a spec may name, built the same way for every algorithm.

The database validates hyperparameters before a job exists, against a contract exported from here
(`python -m workers.modelling.contract` writes `sql/schema/registry.sql`), so a bad value is refused at
enqueue time with the field named, whichever way the request came in.
"""

from __future__ import annotations

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
    Algorithm("HistGradientBoosting", HistGradientBoostingRegressor, scaled=False),
    Algorithm("ElasticNet", ElasticNet, scaled=True),
    Algorithm("Ridge", Ridge, scaled=True),
    Algorithm("Lasso", Lasso, scaled=True),
    Algorithm("LinearRegression", LinearRegression, scaled=True),
)
