"""Advancing a study (the advance_study job) and pruning its trials between folds, on any worker.

A study's state is in the database: its row, its trials and Optuna's own storage, a JournalStorage whose
journal is the study_journal table (`Journal`). Every change to it happens in one transaction that holds
the study's row lock (`_locked`): the journal is appended by one process at a time, numbered without gaps,
and advances and fold reports never interleave. Every trial's end defers an advance of its own
(sql/schema/studies.sql); the first to run after two trials end tells both and fills both slots, the
second finds nothing new. A rescued trial keeps its model and is told once, when that model ends.

Each process keeps its studies' replayed journals (`_ENGINES`) and reads only the entries appended since;
a failed transaction forgets its study's copy, which may hold entries the rollback undid.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import TrialState

from queue_app import gateway, search
from queue_app.errors import Rejected
from queue_app.evolution import CROSSOVER, MUTATION, PARENT

log = logging.getLogger("sfq.worker")
optuna.logging.set_verbosity(optuna.logging.WARNING)

OPTUNA_STUDY_ID = 0  # each sfq study's journal holds one Optuna study: the first, id 0
REUSED_IN_A_ROW = 100  # an advance that asks this many already-trained points in a row ends the study
FAILED_BEFORE_GIVING_UP = 5  # a study whose first trials all fail stops, listing why


class Journal(BaseJournalBackend):
    """Optuna's journal of one study in study_journal, on the connection of the transaction that holds the
    study's row lock (set by `_locked` before each use)."""

    def __init__(self, study_id: int):
        self.study_id = study_id
        self.conn = None

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return gateway.run(self.conn, gateway.study_journal(self.study_id, log_number_from))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        gateway.run(self.conn, gateway.append_study_journal(self.study_id, logs))


@dataclass
class Engine:
    journal: Journal
    storage: JournalStorage

    def study(self, row: dict[str, Any], sampler=None, pruner=None) -> optuna.Study:
        return optuna.Study(study_name=_name(row["id"]), storage=self.storage, sampler=sampler, pruner=pruner)


_ENGINES: dict[int, Engine] = {}


def _name(study_id: int) -> str:
    return f"sfq-study-{study_id}"


@contextlib.contextmanager
def _locked(conn, study_id: int) -> Iterator[tuple[dict[str, Any] | None, Engine | None]]:
    """The study's row, locked for one transaction, and its Optuna storage read up to date through it."""
    try:
        with conn.transaction():
            row = gateway.run(conn, gateway.lock_study(study_id))
            if row is None:
                yield None, None
                return
            engine = _ENGINES.get(study_id)
            if engine is None:
                journal = Journal(study_id)
                journal.conn = conn
                engine = Engine(journal, JournalStorage(journal))
                if row["journal_length"] == 0:
                    directions = list(row["directions"])
                    optuna.create_study(
                        storage=engine.storage, study_name=_name(study_id), directions=directions
                    )
                _ENGINES[study_id] = engine
            engine.journal.conn = conn
            yield row, engine
    except BaseException:
        _ENGINES.pop(study_id, None)
        raise


def _pruner(row: dict[str, Any], folds: int) -> optuna.pruners.BasePruner:
    return search.PRUNERS[row["pruner"]](folds)


# ---------------------------------------------------------------------------------------------------
# Advance: tell the sampler how ended trials went, then ask for one trial per free slot.


def advance(conn, study_id: int) -> None:
    with _locked(conn, study_id) as (row, engine):
        if row is None:
            return
        study = engine.study(row)
        _tell_ended(conn, row, study)
        if row["state"] != "running":
            return
        budget = gateway.run(conn, gateway.study_budget(study_id))
        if reason := _gave_up(row, budget):
            gateway.run(conn, gateway.finish_study(study_id, "failed", reason))
            log.warning("study %s failed: %s", study_id, reason)
            return
        if spent := _spent(row, budget):
            if budget["running"] == 0:
                gateway.run(conn, gateway.finish_study(study_id, "finished", spent))
                log.info("study %s finished: %s", study_id, spent)
            return
        _ask(conn, row, engine, budget)


def _tell_ended(conn, row: dict[str, Any], study: optuna.Study) -> None:
    """Each running trial whose model ended: complete with its objective values, pruned, or failed."""
    for trial in gateway.run(conn, gateway.ended_trials(row["id"])):
        state, values, error = _ending(row, trial)
        tell = {"values": values} if state == "complete" else {"state": _OPTUNA_STATE[state]}
        study.tell(trial["number"], **tell, skip_if_finished=True)
        gateway.run(conn, gateway.settle_trial(row["id"], trial["number"], state, values, error))


_OPTUNA_STATE = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def _ending(row: dict[str, Any], trial: dict[str, Any]) -> tuple[str, list[float] | None, str | None]:
    """A trial's state, objective values and error, from how its model ended."""
    if trial["status"] == "completed":
        values = [search.objective_value(trial["metrics"], objective) for objective in row["objectives"]]
        if None in values:
            return "failed", None, f"the model's {', '.join(row['objectives'])} is not a finite number"
        return "complete", values, None
    error = trial["error"] or trial["status"]
    return ("pruned" if error.startswith("pruned") else "failed"), None, error


def _gave_up(row: dict[str, Any], budget: dict[str, Any]) -> str | None:
    """Why a study whose every trial failed stops asking (None while any succeeded or too few failed); its
    running trials still end and are told."""
    enough = min(FAILED_BEFORE_GIVING_UP, row["n_trials"] or FAILED_BEFORE_GIVING_UP)
    if budget["succeeded"] or budget["failed"] < enough:
        return None
    reasons = "; ".join(sorted(budget["errors"] or [])[:5])
    return f"every trial failed ({budget['failed']}): {reasons}"


def _spent(row: dict[str, Any], budget: dict[str, Any]) -> str | None:
    """Why the study asks for no more trials: its budget is spent (None while it is not)."""
    if row["n_trials"] is not None and budget["trials"] >= row["n_trials"]:
        return f"{budget['trials']} trials of {row['n_trials']}"
    if row["cpu_seconds"] is not None and budget["cpu_seconds"] >= row["cpu_seconds"]:
        return f"{budget['cpu_seconds']:.0f} core-seconds of {row['cpu_seconds']:g}"
    return None


def _ask(conn, row: dict[str, Any], engine: Engine, budget: dict[str, Any]) -> None:
    """Ask the sampler for trials until the free slots are filled or the trial budget is; a point already
    trained (a live model with its fingerprint) is told at once and takes no slot."""
    parallel = row["max_parallel"] or max(gateway.run(conn, gateway.live_training_workers()), 1)
    slots = parallel - budget["running"]
    trials = budget["trials"]
    reused_in_a_row = 0
    while slots > 0 and (row["n_trials"] is None or trials < row["n_trials"]):
        state = _ask_one(conn, row, engine, trials)
        trials += 1
        if state == "failed" and (
            reason := _gave_up(row, gateway.run(conn, gateway.study_budget(row["id"])))
        ):
            gateway.run(conn, gateway.finish_study(row["id"], "failed", reason))
            log.warning("study %s failed: %s", row["id"], reason)
            return
        if state == "running":
            slots -= 1
            reused_in_a_row = 0
        elif state == "reused":
            reused_in_a_row += 1
            if reused_in_a_row >= REUSED_IN_A_ROW and slots == parallel:
                reason = (
                    f"the sampler asked {REUSED_IN_A_ROW} trained points in a row: the space looks exhausted"
                )
                gateway.run(conn, gateway.finish_study(row["id"], "finished", reason))
                return
    if slots == parallel and row["n_trials"] is not None and trials >= row["n_trials"]:
        gateway.run(
            conn, gateway.finish_study(row["id"], "finished", f"{trials} trials of {row['n_trials']}")
        )


def _ask_one(conn, row: dict[str, Any], engine: Engine, number: int) -> str:
    """One trial: asked, submitted as a training request, recorded. Returns its state."""
    sampler = search.SAMPLERS[row["sampler"]].for_trial(row["seed"], number, row["space"])
    trial = engine.study(row, sampler=sampler).ask()
    study = engine.study(row)  # tells without the sampler's after_trial (a grid's would stop the study)
    point = search.suggest(trial, row["space"], row["base"])
    attrs = engine.storage.get_trial(trial._trial_id).system_attrs
    lineage = {"parent_number": attrs.get(PARENT), "mutation": attrs.get(MUTATION)}
    if CROSSOVER in attrs and lineage["mutation"] is not None:
        lineage["mutation"] = {**lineage["mutation"], "crossover_with": attrs[CROSSOVER]}
    if problem := search.too_small(row["space"], point):
        return _failed_at_once(conn, row, study, trial.number, point, problem, lineage)
    request = {**search.request(row["base"], point), "priority": row["priority"]}
    if lineage["parent_number"] is not None:
        request["parent_model_id"] = gateway.run(
            conn, gateway.trial_model(row["id"], lineage["parent_number"])
        )
    try:
        with conn.transaction():  # a savepoint: a refused request fails the trial, not the advance
            submitted = gateway.run(conn, gateway.submit_trial(row["id"], request))
    except Rejected as error:
        return _failed_at_once(conn, row, study, trial.number, point, str(error), lineage)
    state, values, error = "running", None, None
    model = gateway.run(conn, gateway.get_model(submitted.model_id)) if submitted.deduplicated else None
    if model is not None and model["status"] == "completed":  # trained already: told at once
        state, values, error = _ending(row, {**model, "error": None})
        if state == "complete":
            state = "reused"
            study.tell(trial.number, values)
        else:
            study.tell(trial.number, state=TrialState.FAIL)
    gateway.run(
        conn,
        gateway.insert_trial(
            row["id"], trial.number, model_id=submitted.model_id, state=state, params=point, values=values,
            error=error, **lineage,
        ),
    )  # fmt: skip
    return state


def _failed_at_once(conn, row, study: optuna.Study, number: int, point, problem: str, lineage) -> str:
    study.tell(number, state=TrialState.FAIL)
    gateway.run(
        conn, gateway.insert_trial(row["id"], number, state="failed", params=point, error=problem, **lineage)
    )
    return "failed"


# ---------------------------------------------------------------------------------------------------
# Pruning: a fold's score, told as the fold ends; the study's pruner says whether to go on.


class FoldReports:
    """A training's CV folds, told to the pruning studies it is a running trial of. Which those are is read
    at its first fold: a model that is none (most) costs one query per training, not one per fold."""

    def __init__(self, model_id: int, folds: int):
        self.model_id = model_id
        self.folds = folds
        self.trials: list[dict[str, Any]] | None = None

    def report(self, conn, fold: dict[str, Any]) -> str | None:
        """Record the fold with each study; the reason to stop training when each of them prunes it."""
        if self.trials is None:
            self.trials = gateway.run(conn, gateway.pruning_trials(self.model_id))
        verdicts = [_prune(conn, t["study_id"], t["number"], fold, self.folds) for t in self.trials]
        return verdicts[0] if verdicts and all(verdicts) else None


def _prune(conn, study_id: int, number: int, fold: dict[str, Any], folds: int) -> str | None:
    with _locked(conn, study_id) as (row, engine):
        objective = row["objectives"][0]
        value = search.fold_value(fold, objective)
        if value is None or row["state"] != "running":
            return None
        step = int(fold["fold"])
        gateway.run(conn, gateway.record_fold(study_id, number, step, value))
        trial_id = engine.storage.get_trial_id_from_study_id_trial_number(OPTUNA_STUDY_ID, number)
        if engine.storage.get_trial(trial_id).state.is_finished():
            return None
        engine.storage.set_trial_intermediate_value(trial_id, step, value)
        study = engine.study(row, pruner=_pruner(row, folds))
        if not study.pruner.prune(study, engine.storage.get_trial(trial_id)):
            return None
        return (
            f"pruned by study {study_id} ({row['pruner']} pruner) after CV fold {step} of {folds}: "
            f"fold {objective.removeprefix('cv_')} {value:.4g}"
        )
