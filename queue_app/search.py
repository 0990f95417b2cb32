"""A study's search, in Optuna's terms: its objectives, samplers and pruners by name (registries, exported
to the database's checks by workers/modelling/contract.py), its space asked of an Optuna trial one
dimension at a time (define-by-run, so a dimension may depend on another: `when`), and a trial's point
as the training request it makes. No database here: workers/daemon/studies.py runs it against the study's
journal, the dashboard reads a finished study's trials with it.

Optuna (the samplers, pruners and importance evaluators) is imported only where it is used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from queue_app.stats import finite

if TYPE_CHECKING:
    import optuna

# A study's objective: a cross-validation metric (the mean over the CV folds of the training window), by
# the fold score it averages and the direction that is better by default. Never the held-out test window's:
# it stays out of the search, for the final, honest look at the winner.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "cv_ic": ("ic", "maximize"),
    "cv_r2": ("r2", "maximize"),
    "cv_directional_accuracy": ("directional_accuracy", "maximize"),
    "cv_rmse": ("rmse", "minimize"),
}


def objective_value(metrics: dict[str, Any], objective: str) -> float | None:
    """A completed model's value of `objective` (the folds' mean), None when not finite."""
    return finite((metrics or {}).get(f"{objective}_mean"))


def fold_value(fold: dict[str, Any], objective: str) -> float | None:
    """One CV fold's score for `objective`, as the pruner sees it at that fold (its step)."""
    return finite(fold.get(OBJECTIVES[objective][0]))


@dataclass(frozen=True)
class Sampler:
    build: Callable[[int, dict[str, Any]], optuna.samplers.BaseSampler]  # (seed, space) -> sampler
    multi_objective: bool
    discrete: bool = False  # searches a grid: every dimension discrete, none conditional

    def for_trial(self, seed: int, number: int, space: dict[str, Any]) -> optuna.samplers.BaseSampler:
        """The sampler that asks for trial `number` of a study seeded `seed`. Each ask builds its own, so
        each draws anew (one seed for all would draw the same point every time), and the study asks the
        same points every run; but a grid is shuffled by its seed once, so its ids mean the same points
        on every ask, with the study's own seed."""
        return self.build(seed if self.discrete else (seed * 1_000_003 + number) % 2**31, space)


def _random(seed: int, space: dict[str, Any]):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int, space: dict[str, Any]):
    import optuna

    # multivariate and grouped: dimensions sampled jointly, conditional ones in their own groups; the
    # constant liar counts running trials as bad, so parallel asks spread out rather than repeat.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def _cmaes(seed: int, space: dict[str, Any]):
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _nsga2(seed: int, space: dict[str, Any]):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def _grid(seed: int, space: dict[str, Any]):
    import optuna

    return optuna.samplers.GridSampler(grid(space), seed=seed)


def _evolution(seed: int, space: dict[str, Any]):
    from queue_app.evolution import EvolutionSampler

    return EvolutionSampler(seed=seed)


SAMPLERS: dict[str, Sampler] = {
    "random": Sampler(_random, multi_objective=True),
    "tpe": Sampler(_tpe, multi_objective=True),
    "cmaes": Sampler(_cmaes, multi_objective=False),
    "nsga2": Sampler(_nsga2, multi_objective=True),
    "grid": Sampler(_grid, multi_objective=True, discrete=True),
    "evolution": Sampler(_evolution, multi_objective=False),
}


def _median(folds: int):
    import optuna

    # Not before 5 trials have finished, nor before fold 2: one fold of an expanding CV is the least data.
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def _successive_halving(folds: int):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def _hyperband(folds: int):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(folds, 2), reduction_factor=3)


def _wilcoxon(folds: int):
    import optuna

    # The folds are the same for every trial of a study (same bars, same splits): paired by fold.
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


def _none(folds: int):
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "none": _none,
    "median": _median,
    "successive_halving": _successive_halving,
    "hyperband": _hyperband,
    "wilcoxon": _wilcoxon,
}


# ---------------------------------------------------------------------------------------------------
# The space.


def _choice(value: Any) -> Any:
    """A categorical value as Optuna stores it: scalars as they are, lists (a named feature set) as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def _unchoice(value: Any, choices: list[Any]) -> Any:
    return next(choice for choice in choices if _choice(choice) == value)


def _applies(dimension: dict[str, Any], point: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether a conditional dimension is searched for this point: each `when` field has its value(s)."""
    for field, wanted in dimension.get("when", {}).items():
        value = point.get(field, base.get(field))
        if value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def ordered(space: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Dimensions in the order they are asked: unconditional ones first, each group by name."""
    return sorted(space.items(), key=lambda item: ("when" in item[1], item[0]))


def suggest(trial: optuna.Trial, space: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Ask `trial` for a point of the space: {field: value} for every dimension that applies."""
    point: dict[str, Any] = {}
    for name, dimension in ordered(space):
        if not _applies(dimension, point, base):
            continue
        kind = dimension["type"]
        if kind == "int":
            point[name] = trial.suggest_int(
                name, dimension["low"], dimension["high"], step=dimension.get("step", 1),
                log=dimension.get("log", False),
            )  # fmt: skip
        elif kind == "float":
            point[name] = trial.suggest_float(
                name, dimension["low"], dimension["high"], step=dimension.get("step"),
                log=dimension.get("log", False),
            )  # fmt: skip
        elif kind == "categorical":
            choices = dimension["choices"]
            point[name] = _unchoice(trial.suggest_categorical(name, [_choice(c) for c in choices]), choices)
        else:  # subset: one yes/no per name
            point[name] = [
                item for item in dimension["of"] if trial.suggest_categorical(f"{name}.{item}", [True, False])
            ]
    return point


def too_small(space: dict[str, Any], point: dict[str, Any]) -> str | None:
    """Why a point cannot be trained (a subset below its min_size), or None."""
    for name, dimension in space.items():
        if (
            dimension["type"] == "subset"
            and name in point
            and len(point[name]) < dimension.get("min_size", 1)
        ):
            return f"{name}: {len(point[name])} chosen, fewer than min_size {dimension.get('min_size', 1)}"
    return None


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every dimension's values, as Optuna's GridSampler searches them (the database checked that each
    dimension is discrete and unconditional)."""
    values: dict[str, list[Any]] = {}
    for name, dimension in space.items():
        kind = dimension["type"]
        if kind == "categorical":
            values[name] = [_choice(c) for c in dimension["choices"]]
        elif kind == "subset":
            values.update({f"{name}.{item}": [True, False] for item in dimension["of"]})
        else:
            step = dimension.get("step", 1)
            count = int(math.floor((dimension["high"] - dimension["low"]) / step + 1e-9)) + 1
            values[name] = [dimension["low"] + i * step for i in range(count)]
            if kind == "int":
                values[name] = [int(v) for v in values[name]]
    return values


def request(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The training request a point makes: the base, each field of the point over it, and
    `hyperparameters.<name>` merged into the base's hyperparameters."""
    made = {**base, **{k: v for k, v in point.items() if not k.startswith("hyperparameters.")}}
    hyperparameters = {
        k.removeprefix("hyperparameters."): v for k, v in point.items() if k.startswith("hyperparameters.")
    }
    if hyperparameters:
        made["hyperparameters"] = {**base.get("hyperparameters", {}), **hyperparameters}
    return made


def optuna_params(point: dict[str, Any], space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's point as Optuna's params and their distributions (the inverse of `suggest`): to rebuild
    a study's trials outside its journal (parameter importances)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params: dict[str, Any] = {}
    distributions: dict[str, Any] = {}
    for name, dimension in space.items():
        if name not in point:
            continue
        kind, value = dimension["type"], point[name]
        if kind == "subset":
            for item in dimension["of"]:
                params[f"{name}.{item}"] = item in value
                distributions[f"{name}.{item}"] = CategoricalDistribution([True, False])
        elif kind == "categorical":
            params[name] = _choice(value)
            distributions[name] = CategoricalDistribution([_choice(c) for c in dimension["choices"]])
        else:
            family = IntDistribution if kind == "int" else FloatDistribution
            step = dimension.get("step", 1 if kind == "int" else None)
            log = dimension.get("log", False)
            params[name] = value
            distributions[name] = family(dimension["low"], dimension["high"], log=log, step=step)
    return params, distributions
