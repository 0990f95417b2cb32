"""How a training attempt ended: one value, sent by the training process and returned by
`TrainingProcess.train` (a timeout, the memory limit, a dead process and a shutdown are values too), and
turned into the model's state in one place, `Runtime._settle`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.modelling.training import TrainingResult


@dataclass(frozen=True)
class Completed:
    """Trained: the result to write."""

    result: TrainingResult


@dataclass(frozen=True)
class Failed:
    """A failure retrying will not change (no data, a bad spec, an estimator's error, the timeout, the
    memory limit, a crash): the model fails with `reason`."""

    reason: str


@dataclass(frozen=True)
class Retry:
    """Not the model's fault (the database away, the worker shutting down, no process to train in): the
    model goes back to the queue. `at_once` after a shutdown: the job is due again at once, for another
    worker; otherwise after a backoff."""

    reason: str
    at_once: bool = False


@dataclass(frozen=True)
class Pruned:
    """A study's pruner stopped the training between CV folds: the model is cancelled with `reason`, the
    folds scored so far kept (never written as completed)."""

    reason: str
    folds: list[dict]


@dataclass(frozen=True)
class FoldScored:
    """Not an outcome: what the training process sends as each CV fold ends, before its answer."""

    fold: dict


@dataclass(frozen=True)
class Progress:
    """Not an outcome: what the training process sends as each phase starts (written on the model's row
    by the daemon, which holds the connections)."""

    phase: str
    fraction: float


Outcome = Completed | Failed | Retry | Pruned
