"""What a worker daemon does for its jobs (`Runtime`, in every task's context): claim a model, load its
bars, train it in the training process, and record how the attempt ended (`_settle`, the one place); run
forecasts and backtests beside it; and, in its own loop, beat (the daemon's heartbeat and, when it is due,
the fleet's round: the jobs of dead workers rescued, due retrains; sfq_beat, in the database) and prune
finished queue jobs, so there is no cron to install. Every query goes through queue_app.gateway.

A daemon holds at most three connections (README, "More machines"): Procrastinate's LISTEN (`listen`,
none behind a transaction pooler) and its pool of one (`queue`: jobs fetched and finished, the beat), and
`data`, everything else, one statement or transaction at a time; the training process holds none (its
bars come through its pipe, its progress goes back through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from queue_app import artifact_store, gateway, tracing
from queue_app.config import Settings
from queue_app.errors import SfqError, Unavailable
from queue_app.gateway import Call
from queue_app.vocabulary import TRAINING_QUEUE
from workers.daemon import backtests, forecasts, logs, notify, studies
from workers.daemon.app import connection_name
from workers.daemon.child import CHECK_EVERY_S, TrainingProcess
from workers.daemon.data import load_bars
from workers.daemon.outcome import Completed, Failed, Outcome, Pruned, Retry
from workers.modelling import artifacts
from workers.modelling.training import training_end

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool
    from procrastinate.worker import Worker

    from workers.modelling.training import TrainingResult

T = TypeVar("T")
log = logging.getLogger("sfq.worker")

# The database away (a lost connection, a restart) or a concurrent change in the way (serialization
# failure, deadlock) is the gateway's Unavailable: retried. Anything else fails the model at once.
# Backoff, in seconds, for writing a finished result (or an attempt's end) while the database is away:
WRITE_RETRIES_S = (0.5, 1, 2, 4, 8, 16, 32)
# Finished jobs past the retention are pruned every minute, a batch a transaction until none is left:
# between two rounds the queue's tables grow by a minute of jobs at most (docs/BENCHMARKS.md, sustained).
PRUNE_EVERY_S, PRUNE_BATCH = 60, 10_000
# How the daemon logs each row of the fleet's round (sfq_beat: `kind`, and `what`'s fields).
ROUND_LOG = {
    "rescued": (
        logging.WARNING,
        "rescue: model {model_id} job {old_job_id} lost its worker: {outcome} (new job {new_job_id})",
    ),
    "closed": (
        logging.WARNING,
        "rescue: {task} {object_id} job {job_id} was still running after its end ({ended}): job closed",
    ),
    "side rescued": (
        logging.WARNING,
        "rescue: {task} {object_id} job {old_job_id} lost its worker (new job {new_job_id})",
    ),
    "retrained": (
        logging.INFO,
        "retrain {id} of {strategy}/{alias} ({cause}, due {due_at}): model {model_id}{refused}",
    ),
    "woken": (logging.DEBUG, "round: {workers} sleeping worker(s) woken for due jobs none was woken for"),
    "vacuum": (logging.DEBUG, "round: {dead_rows} dead rows in the beats' tables: a VACUUM is due"),
    "analyze": (
        logging.DEBUG,
        "round: procrastinate_jobs holds {rows} rows, its statistics say {estimated}: an ANALYZE is due",
    ),
}


class ModelFailed(SfqError):
    """Raised after the model is marked failed, so that Procrastinate records the job as failed too."""


class Requeue(SfqError):
    """The job goes back to the queue (shutdown, or the database away): the exception Procrastinate
    retries a job on (tasks.RequeueStrategy), at once after a shutdown (another worker may take it now),
    later after a database error."""

    def __init__(self, reason: str, at_once: bool = False):
        super().__init__(reason)
        self.at_once = at_once


class Runtime:
    """What a job needs from its daemon: the database, the training child, settings, and who we are."""

    def __init__(self, url: str, instance: int, settings: Settings, trainer: TrainingProcess | None = None):
        """`trainer`: where models train; a stand-in with its methods that trains nothing lets the fleet
        benchmark (bench/fleet.py) run hundreds of daemons without a scikit-learn process each."""
        self.url = url
        self.instance = instance
        self.settings = settings
        self.host = settings.hostname
        self.pid = os.getpid()
        self.trainer = trainer or TrainingProcess(settings.max_jobs_per_child)
        self.workers: list[Worker] = []  # the daemon's Procrastinate workers, the training one first
        self.queue_pool: psycopg_pool.AsyncConnectionPool | None = None  # Procrastinate's, once open
        self.stopping = False  # a signal asked us to stop (systemd's STATUS= then stays "stopping")
        self._data: psycopg.Connection | None = None  # in threads, one at a time (`_data_lock`)
        self._data_lock = threading.Lock()
        self._said_no_vacuum = False  # the beats' tables need a VACUUM this role may not run: said once
        self.poll_interval_s = settings.poll_interval_s  # the idle workers' mean wait now (pace)

    def _data_connection(self) -> psycopg.Connection:
        """The data connection (under `_data_lock`), opened again when a database restart broke it."""
        if self._data is None or self._data.closed or self._data.broken:
            self._data = gateway.connect(
                self.url,
                connection_name(self.instance, "data"),
                self.settings.connection_options,
                autocommit=True,
            )
        return self._data

    def _on_data(self, work: Callable[[psycopg.Connection], T]) -> T:
        """`work` on the data connection, which no other thread uses meanwhile."""
        with self._data_lock:
            return work(self._data_connection())

    async def _on_data_async(self, work: Callable[[psycopg.Connection], T]) -> T:
        """`work` on the data connection, in a thread; a connection a database restart killed is replaced
        once, transparently (`work` must be safe to run again: a failed statement changed nothing)."""
        for fresh in (False, True):
            try:
                return await asyncio.to_thread(self._on_data, work)
            except Unavailable:
                if fresh or (self._data is not None and not self._data.broken):
                    raise
        raise AssertionError("unreachable")

    async def _run(self, call: Call[T]) -> T:
        """A gateway call on the data connection."""
        return await self._on_data_async(lambda conn: gateway.run(conn, call))

    async def _run_queue(self, call: Call[T]) -> T:
        """A gateway call on Procrastinate's pool: the queue's own bookkeeping (heartbeat, rescue), never
        waiting behind a job's work on the data connection."""
        return await gateway.run_pooled(self.queue_pool, call)

    async def _with_retries(self, what: str, write):
        """A write that must survive a database restart: retried with backoff, then the job is requeued."""
        for delay in (*WRITE_RETRIES_S, None):
            try:
                return await write()
            except Unavailable as error:
                if delay is None:
                    raise Requeue(f"could not {what}: {error}") from None
                log.warning("could not %s (%s); retrying in %s s", what, error, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _record(self, what: str, call: Call[bool]) -> bool:
        """Record this attempt's end (failed or requeued); False when the attempt was handed on."""
        return await self._with_retries(what, lambda: self._run(call))

    async def train(self, model_id: int, job_id: int) -> None:
        logs.JOB.set(job_id)  # this job's task only: every line it logs names the job and the model
        logs.MODEL.set(model_id)
        try:
            await self._train(model_id, job_id)
        finally:
            if not self.stopping:
                notify.status("idle")

    async def _train(self, model_id: int, job_id: int) -> None:
        try:
            claim = await self._run(gateway.start_model(model_id, job_id, self.host, self.pid))
        except Unavailable as error:
            raise Requeue(f"could not start: {error}") from None
        if claim is None:
            log.info(
                "job %s model %s: not the model's current job, or the model is finished: skipped",
                job_id,
                model_id,
            )
            return
        attempt = claim["attempts"]
        started = time.perf_counter()
        traced = {
            "sfq.model.id": model_id,
            "sfq.model.fingerprint": claim["fingerprint"],
            "sfq.model.algorithm": claim["algorithm"],
            "sfq.attempt": attempt,
        }
        with tracing.processing(TRAINING_QUEUE, claim["traceparent"], job_id, traced) as span:
            clock = tracing.TrainingClock()
            try:
                outcome = await self._attempt(
                    model_id, job_id, attempt, claim["spec"], claim["timeout_s"], clock
                )
            except BaseException as error:  # cancelled (sfq_cancel_model aborts the job), or a bug
                if isinstance(error, asyncio.CancelledError):
                    log.info("job %s model %s: cancelled; training process killed", job_id, model_id)
                with contextlib.suppress(Exception):  # fenced: a model cancelled on request stays cancelled
                    await self._run(gateway.fail_model(model_id, attempt, f"{type(error).__name__}: {error}"))
                raise
            timings = outcome.result.timings if isinstance(outcome, Completed) else None
            tracing.training_spans(clock, timings, claim["spec"]["cv_folds"])
            if isinstance(outcome, Failed):
                tracing.failed(span, outcome.reason)
            await self._settle(model_id, job_id, attempt, outcome, started)

    async def _attempt(
        self,
        model_id: int,
        job_id: int,
        attempt: int,
        spec: dict[str, Any],
        timeout_s: float | None,
        clock: tracing.TrainingClock,
    ) -> Outcome:
        """The training process's outcome for this attempt (no process to train in is a Retry)."""
        notify.status(f"training model {model_id} (job {job_id}, attempt {attempt})")
        await asyncio.to_thread(self._progress, model_id, attempt, "loading", 0.0)
        try:
            bars, context = await self._on_data_async(lambda conn: load_bars(conn, spec, training_end(spec)))
        except Unavailable as error:
            return Retry(f"while loading bars: {error}")
        try:
            # Recycling the training process waits for it: not on the event loop, heartbeats go on.
            child_pid = await asyncio.get_running_loop().run_in_executor(None, self.trainer.ensure_started)
        except OSError as error:  # cannot fork now
            return Retry(str(error))
        log.info(
            "job %s model %s starting in process %s on %s (attempt %s, training process %s)",
            job_id,
            model_id,
            self.pid,
            self.host,
            attempt,
            child_pid,
        )
        timeout_s = timeout_s or self.settings.timeout_s
        reports = studies.FoldReports(model_id, spec["cv_folds"])

        def on_fold(fold: dict[str, Any]) -> str | None:
            clock.fold_ends_ns.append(time.time_ns())
            return self._fold_scored(reports, fold)

        on_progress = functools.partial(self._progress, model_id, attempt)
        clock.sent_ns = time.time_ns()
        try:
            return await self.trainer.train(
                spec, bars, context, timeout_s, self.settings.memory_limit_mb, on_fold, on_progress
            )
        finally:
            clock.answered_ns = time.time_ns()

    def _progress(self, model_id: int, attempt: int, phase: str, fraction: float) -> None:
        """Progress on the model's row (in the thread that waits for the training): a nicety that never
        fails or stalls a training, so it is skipped while the data connection is busy for more than a
        moment, or broken (it opens none)."""
        if not self._data_lock.acquire(timeout=CHECK_EVERY_S):
            return
        try:
            if self._data is not None and not self._data.broken:
                with contextlib.suppress(Exception):
                    gateway.run(
                        self._data, gateway.report_progress(model_id, attempt, phase, round(fraction, 3))
                    )
        finally:
            self._data_lock.release()

    def _fold_scored(self, reports: studies.FoldReports, fold: dict[str, Any]) -> str | None:
        """A CV fold ended (in the thread that waits for the training): the studies it is a trial of
        record it, and their pruners may stop the training. Never fails the training: without the
        database, it goes on unpruned."""
        if reports.trials == []:  # a trial of no pruning study: nothing to ask the database
            return None
        try:
            return self._on_data(lambda conn: reports.report(conn, fold))
        except Exception as error:
            log.warning(
                "model %s: fold %s not reported to its studies: %s", reports.model_id, fold.get("fold"), error
            )
            return None

    async def _settle(
        self, model_id: int, job_id: int, attempt: int, outcome: Outcome, started: float
    ) -> None:
        """The one place an attempt's outcome becomes the model's state, every write fenced by the attempt
        number (an attempt handed on to another worker changes nothing):

        - Completed: `completed` with every result, in one transaction (a result that cannot be written
          is Failed);
        - Failed: `failed` with the reason, and the job fails too (ModelFailed);
        - Retry: `queued` again, and the job goes back to the queue (Requeue);
        - Pruned: `cancelled` by its study's pruner, with the folds scored so far.

        A write that the database's absence outlasts (retried with backoff) requeues the job as it is."""
        if isinstance(outcome, Completed):
            unwritten = await self._write_result(model_id, job_id, attempt, outcome.result, started)
            if unwritten is None:
                return
            outcome = unwritten
        if isinstance(outcome, Pruned):
            prune = gateway.prune_model(model_id, attempt, outcome.reason, outcome.folds)
            await self._record(f"prune model {model_id}", prune)
            log.info("job %s model %s: %s", job_id, model_id, outcome.reason)
            return
        if isinstance(outcome, Retry):
            requeue = gateway.requeue_model(model_id, attempt, outcome.reason)
            if not await self._record(f"requeue model {model_id}", requeue):
                log.warning(
                    "job %s model %s: attempt %s was handed on; not requeued", job_id, model_id, attempt
                )
                return
            log.warning("job %s model %s: %s; back to the queue", job_id, model_id, outcome.reason)
            raise Requeue(outcome.reason, at_once=outcome.at_once)
        await self._record(f"fail model {model_id}", gateway.fail_model(model_id, attempt, outcome.reason))
        log.warning("job %s model %s failed in process %s: %s", job_id, model_id, self.pid, outcome.reason)
        raise ModelFailed(outcome.reason)

    async def _write_result(
        self, model_id: int, job_id: int, attempt: int, result: TrainingResult, started: float
    ) -> Failed | None:
        """Every result written (retried while the database is away), or dropped when the attempt was
        handed on: None; Failed when the result cannot be written (a constraint, a bug)."""
        try:
            with tracing.step("store results", **{"sfq.model.id": model_id}):
                written = await self._with_retries(
                    f"write the result of model {model_id}", lambda: self._complete(model_id, attempt, result)
                )
        except Requeue:
            raise
        except Exception as error:  # not transient: the model fails, saying why
            return Failed(f"could not write the result: {type(error).__name__}: {error}")
        if written:
            log.info(
                "job %s model %s completed in process %s in %.2f s",
                job_id,
                model_id,
                self.pid,
                time.perf_counter() - started,
            )
        else:
            log.warning(
                "job %s model %s: attempt %s was handed on (worker presumed dead); its result is dropped",
                job_id,
                model_id,
                attempt,
            )
        return None

    async def _complete(self, model_id: int, attempt: int, result: TrainingResult) -> bool:
        """Write every result in one transaction, only if this attempt still holds the model (fencing)."""
        store = self.settings.artifact_store
        location = None
        if store:  # the file to the outside store first: the transaction then only links it
            location = (await asyncio.to_thread(artifact_store.put, store, result.artifact)).location
        return await self._on_data_async(
            lambda conn: gateway.write_result(conn, model_id, attempt, result, artifacts.FORMAT, location)
        )

    async def forecast(self, forecast_id: int) -> None:
        """A live forecast: loading a model and predicting one row takes milliseconds."""
        await self._side_job(forecasts.run, forecast_id)

    async def backtest(self, simulation_id: int) -> None:
        """A backtest: vectorised over a few hundred bars, it takes milliseconds."""
        await self._side_job(backtests.run, simulation_id)

    async def advance_study(self, study_id: int) -> None:
        """A study's advance: Optuna is synchronous; tells and asks take milliseconds."""
        try:
            await self._side_job(studies.advance, study_id)
        except Exception as error:  # retried (tasks.py); said here, where the operator reads the log
            log.warning("study %s: advance failed: %s: %s", study_id, type(error).__name__, error)
            raise

    async def give_up_study(self, study_id: int, reason: str) -> None:
        await self._run(gateway.finish_study(study_id, "failed", reason))

    async def _side_job(self, run: Callable[[psycopg.Connection, int], None], object_id: int) -> None:
        """Forecasts, backtests and study advances: synchronous, in a thread, on the data connection
        (connecting anew cost about as much as a backtest itself). A connection a database restart
        broke fails its job (asking again re-queues it) and is replaced on the next one."""
        await asyncio.to_thread(self._on_data, lambda conn: run(conn, object_id))

    async def give_up(self, model_id: int, job_id: int, reason: str) -> None:
        await self._run(gateway.give_up_model(model_id, job_id, reason))

    async def rescue_forever(self) -> None:
        """Beat, and prune old finished jobs.

        The beat (sfq_beat) keeps our workers' heartbeats, Procrastinate's own being rare
        (serve.py): it goes on while a running job may still finish in the grace period after
        Procrastinate stops its heartbeat at the start of a shutdown.
        """
        last_prune, tidying = -math.inf, None
        while not self.workers or any(w.worker_id is None for w in self.workers):  # registered at start
            await asyncio.sleep(0.1)
        try:
            while True:
                asks: dict[str, dict] = {}
                try:
                    asks = await self._beat([w.worker_id for w in self.workers])
                except Exception as error:  # the database away, or a query refused: try again next beat
                    log.warning("beat failed (%s); will try again", error)
                # Tidying on the data connection, beside this loop: it never holds up the queue's fetches,
                # and a long backtest or a model file's rebuild there never holds up our heartbeat.
                prune = time.monotonic() - last_prune > PRUNE_EVERY_S
                if (prune or asks) and (tidying is None or tidying.done()):
                    tidying = asyncio.create_task(self._tidy(prune, asks))
                    last_prune = time.monotonic() if prune else last_prune
                await asyncio.sleep(self.settings.heartbeat_s)
        finally:
            if tidying is not None:
                tidying.cancel()

    async def _tidy(self, prune: bool, asks: dict[str, dict]) -> None:
        """`prune`: finished jobs, then accepted requests, past the retention, a batch a transaction (no
        long lock, no long transaction), then, when any went and this role may, a VACUUM of the queue's
        tables and the requests (a job's row is updated twice and deleted once). `asks`: what the fleet's
        round asked this daemon to do, by kind: 'vacuum', the beats' tables (an idle fleet prunes nothing,
        and its beats update their rows); 'analyze', the jobs' statistics (sfq_beat). A role that may not
        VACUUM the beats' tables says so once; one that may not ANALYZE the jobs leaves it to autovacuum.
        A server with autovacuum off (or behind) would let the dead rows pile up (docs/BENCHMARKS.md,
        sustained), and the sessions' plans for the jobs go stale."""
        retention = self.settings.job_retention_s
        calls = (
            gateway.prune_finished_jobs(retention, PRUNE_BATCH),
            gateway.prune_requests(retention, PRUNE_BATCH),
        )
        try:
            pruned = 0
            for call in calls if prune else ():
                batch = PRUNE_BATCH
                while batch == PRUNE_BATCH:
                    batch = await self._run(call)
                    pruned += batch
            if (pruned or "analyze" in asks) and await self._run(gateway.may_vacuum_queue()):
                if pruned:
                    await self._run(gateway.vacuum_queue())  # with ANALYZE
                else:
                    await self._run(gateway.analyze_jobs())
                    log.info(
                        "analyzed procrastinate_jobs (%s rows, its statistics said %s)",
                        asks["analyze"]["rows"],
                        asks["analyze"]["estimated"],
                    )
            dead_rows = asks.get("vacuum", {}).get("dead_rows")
            if dead_rows and await self._run(gateway.may_vacuum_beats()):
                await self._run(gateway.vacuum_beats())
                log.info("vacuumed the beats' tables (%s dead rows)", dead_rows)
            elif dead_rows and not self._said_no_vacuum:
                log.warning(
                    "the beats' tables need a VACUUM this role may not run: autovacuum's or their owner's"
                )
                self._said_no_vacuum = True
        except Exception as error:  # the database away: the next round prunes what is left
            log.warning("pruning or vacuuming failed (%s); will try again", error)

    def pace(self, daemons: int) -> None:
        """The idle workers' mean wait between polls: SFQ_POLL_INTERVAL_S, or the fleet's size (its last
        round's count) times SFQ_POLL_GAP_S if longer, so that the fleet polls a queue about that often at
        most, however many daemons join it: each poll costs the database the same, and the polls of N idle
        workers come about their interval / N apart (README, "More machines")."""
        interval = self.settings.poll_interval_for(daemons)
        if interval != self.poll_interval_s:
            # A fleet's count moves by a daemon or two: said at INFO when the wait moves by a tenth.
            moved = abs(interval - self.poll_interval_s) >= 0.1 * self.poll_interval_s
            log.log(
                logging.INFO if moved else logging.DEBUG,
                "worker %s: polling every %g s when idle (a fleet of %s daemon%s, SFQ_POLL_GAP_S %g)",
                self.instance,
                interval,
                daemons,
                "" if daemons == 1 else "s",
                self.settings.poll_gap_s,
            )
            self.poll_interval_s = interval
            for worker in self.workers:
                worker.fetch_job_polling_interval = interval

    async def _beat(self, workers: list[int]) -> dict[str, dict]:
        """The fleet's round if it is due, then our heartbeats (sfq_beat, which writes them last). The
        round: the rescue of the training, forecast, backtest and study jobs of workers silent for
        SFQ_RESCUE_AFTER_S, and the weekly and cron retrain policies that are due (once per due time:
        sql/schema/retrains.sql). It runs at most once per half heartbeat for the whole fleet, so a dead
        worker's job waits at most that longer. What the round asks this daemon to do, by kind (a VACUUM
        of the beats' tables, an ANALYZE of the jobs: _tidy)."""
        settings = self.settings
        beat = gateway.beat(
            workers,
            self.host,
            self.pid,
            self.instance,
            settings.rescue_after_s,
            settings.max_attempts,
            settings.heartbeat_s / 2,
        )
        asks = {}
        for row in await self._run_queue(beat):
            what = row["what"]
            if row["kind"] == "fleet":
                self.pace(what["daemons"])
                continue
            if row["kind"] not in ROUND_LOG:  # from a newer schema than this daemon's code
                log.info("round: %s %s", row["kind"], what)
                continue
            level, template = ROUND_LOG[row["kind"]]
            refused = f" refused: {what['error']}" if what.get("error") else ""
            log.log(level, template.format_map({**what, "refused": refused}))
            if row["kind"] in ("vacuum", "analyze"):
                asks[row["kind"]] = what
        return asks

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.trainer.close)
        if self._data is not None:
            self._data.close()
