"""The `evolution` sampler: the old service's evolution chain, automatic. Each new trial is a mutation of a
good earlier one (sometimes crossed with a second): the parent is picked by a tournament of two among the
best `population` completed trials, every dimension mutates with probability 1/d (at least one does): a
number by a Gaussian step of `scale` of its range (on the log scale for a log dimension), a categorical
to another value. The first `population` trials are random. The parent, the other parent and what changed
are the trial's system attributes (PARENT, CROSSOVER, MUTATION): the study records them, and the trial's
model gets the parent's model as its parent_model_id (its lineage)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PARENT, CROSSOVER, MUTATION = "sfq:parent", "sfq:crossover", "sfq:mutation"


def _mutate(value: Any, distribution: BaseDistribution, rng: np.random.RandomState, scale: float) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        others = [choice for choice in distribution.choices if choice != value]
        return others[rng.randint(len(others))] if others else value
    assert isinstance(distribution, IntDistribution | FloatDistribution)
    low, high, log = distribution.low, distribution.high, distribution.log
    if log:
        moved = math.exp(math.log(value) + rng.normal(0, scale * (math.log(high) - math.log(low))))
    else:
        moved = value + rng.normal(0, scale * (high - low))
    moved = min(max(moved, low), high)
    step = distribution.step
    if step is not None:
        moved = low + round((moved - low) / step) * step
        moved = min(moved, high)
    if isinstance(distribution, IntDistribution):
        moved = int(round(moved))
        if moved == value and high > low:  # a step too small to show on an integer: one step instead
            moved = min(max(value + (1 if rng.rand() < 0.5 else -1) * (step or 1), low), high)
    return moved


class EvolutionSampler(optuna.samplers.BaseSampler):
    def __init__(
        self, seed: int | None = None, population: int = 10, crossover_rate: float = 0.2, scale: float = 0.2
    ):
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self.population = population
        self.crossover_rate = crossover_rate
        self.scale = scale
        self._plans: dict[int, dict[str, Any]] = {}

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def _pick(self, ranked: list[FrozenTrial]) -> FrozenTrial:
        """A tournament of two among the ranked (best first): the better of two drawn at random."""
        first, second = self._rng.randint(len(ranked)), self._rng.randint(len(ranked))
        return ranked[min(first, second)]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        completed = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.population:
            return
        best_first = study.direction == StudyDirection.MAXIMIZE
        ranked = sorted(completed, key=lambda t: (-t.value if best_first else t.value, t.number))[
            : self.population
        ]
        parent = self._pick(ranked)
        params = dict(parent.params)
        distributions = dict(parent.distributions)
        storage, trial_id = study._storage, trial._trial_id
        if len(ranked) > 1 and self._rng.rand() < self.crossover_rate:
            other = self._pick([t for t in ranked if t.number != parent.number])
            for name in params.keys() & other.params.keys():
                if self._rng.rand() < 0.5:
                    params[name] = other.params[name]
            storage.set_trial_system_attr(trial_id, CROSSOVER, other.number)
        names = sorted(params)
        chosen = [name for name in names if self._rng.rand() < 1 / len(names)] or [
            names[self._rng.randint(len(names))]
        ]
        mutation = {}
        for name in chosen:
            before = params[name]
            params[name] = _mutate(before, distributions[name], self._rng, self.scale)
            mutation[name] = [before, params[name]]
        self._plans[trial.number] = params
        storage.set_trial_system_attr(trial_id, PARENT, parent.number)
        storage.set_trial_system_attr(trial_id, MUTATION, mutation)

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial.number, {})
        if param_name in plan:
            try:
                if param_distribution._contains(param_distribution.to_internal_repr(plan[param_name])):
                    return plan[param_name]
            except ValueError:  # not one of this distribution's choices
                pass
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._plans.pop(trial.number, None)
