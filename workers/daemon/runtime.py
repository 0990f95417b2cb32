"""The worker daemon (`sfq worker N`): one Procrastinate worker with concurrency 1 and one training child.

One daemon per core; systemd starts them as worker@N, `sfq workers` stands in where there is no systemd.
Besides its jobs, every daemon rescues jobs whose worker died (see sql/migrations/0002_resilience.sql)
and prunes finished queue jobs, so there is no cron to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from procrastinate.worker import Worker

from queue_app import gateway
from queue_app.config import Settings
from queue_app.errors import NoSchema, SfqError, Unavailable
from queue_app.gateway import Call
from queue_app.vocabulary import PREDICTION_QUEUE, SIMULATION_QUEUE, TRAINING_QUEUE
from workers.daemon import backtests, forecasts, logs, notify
from workers.daemon.app import app, connector
from workers.daemon.child import THREAD_LIMIT_ENV, TrainingProcess
from workers.daemon.outcome import Completed, Failed, Outcome, Retry
from workers.modelling import artifacts

if TYPE_CHECKING:
    import psycopg

    from workers.modelling.training import TrainingResult

T = TypeVar("T")
log = logging.getLogger("sfq.worker")

# The database away (a lost connection, a restart) or a concurrent change in the way (serialization
# failure, deadlock) is the gateway's Unavailable: retried. Anything else fails the model at once.
# Backoff, in seconds, for writing a finished result (or an attempt's end) while the database is away:
WRITE_RETRIES_S = (0.5, 1, 2, 4, 8, 16, 32)
PRUNE_EVERY_S = 3600


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

    def __init__(self, url: str, instance: int, settings: Settings):
        self.url = url
        self.instance = instance
        self.settings = settings
        self.host = settings.hostname
        self.pid = os.getpid()
        self.trainer = TrainingProcess(url, settings.max_jobs_per_child)
        self.worker: Worker | None = None  # set once the Procrastinate worker exists (for its id)
        self.stopping = False  # a signal asked us to stop (systemd's STATUS= then stays "stopping")
        self._conns: dict[str, psycopg.AsyncConnection] = {}
        self._side: psycopg.Connection | None = None  # forecasts and backtests, in threads
        self._side_lock = threading.Lock()

    async def _db(self, purpose: str = "jobs") -> psycopg.AsyncConnection:
        """One connection per purpose: the rescue loop must never run inside a job's transaction."""
        conn = self._conns.get(purpose)
        if conn is None or conn.closed or conn.broken:
            conn = self._conns[purpose] = await gateway.connect_async(
                self.url, f"sfq-worker-{self.instance}-{purpose}", autocommit=True
            )
        return conn

    async def _run(self, call: Call[T], purpose: str = "jobs") -> T:
        """Run a gateway call; a connection killed by a database restart is replaced once, transparently."""
        for fresh in (False, True):
            db = await self._db(purpose)
            try:
                return await gateway.run_async(db, call)
            except Unavailable:
                if fresh or not db.broken:
                    raise
        raise AssertionError("unreachable")

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
        try:
            outcome = await self._attempt(model_id, job_id, attempt, claim["spec"], claim["timeout_s"])
        except BaseException as error:  # cancelled (sfq_cancel_model aborts the job), or a bug
            if isinstance(error, asyncio.CancelledError):
                log.info("job %s model %s: cancelled; training process killed", job_id, model_id)
            with contextlib.suppress(Exception):  # fenced: a model cancelled on request stays cancelled
                await self._run(gateway.fail_model(model_id, attempt, f"{type(error).__name__}: {error}"))
            raise
        await self._settle(model_id, job_id, attempt, outcome, started)

    async def _attempt(
        self, model_id: int, job_id: int, attempt: int, spec: dict[str, Any], timeout_s: float | None
    ) -> Outcome:
        """The training process's outcome for this attempt (no process to train in is a Retry)."""
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
        notify.status(f"training model {model_id} (job {job_id}, attempt {attempt})")
        timeout_s = timeout_s or self.settings.timeout_s
        return await self.trainer.train(spec, timeout_s, self.settings.memory_limit_mb, model_id, attempt)

    async def _settle(
        self, model_id: int, job_id: int, attempt: int, outcome: Outcome, started: float
    ) -> None:
        """The one place an attempt's outcome becomes the model's state, every write fenced by the attempt
        number (an attempt handed on to another worker changes nothing):

        - Completed: `completed` with every result, in one transaction (a result that cannot be written
          is Failed);
        - Failed: `failed` with the reason, and the job fails too (ModelFailed);
        - Retry: `queued` again, and the job goes back to the queue (Requeue).

        A write that the database's absence outlasts (retried with backoff) requeues the job as it is."""
        if isinstance(outcome, Completed):
            unwritten = await self._write_result(model_id, job_id, attempt, outcome.result, started)
            if unwritten is None:
                return
            outcome = unwritten
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
        return await gateway.write_result(await self._db(), model_id, attempt, result, artifacts.FORMAT)

    async def forecast(self, forecast_id: int) -> None:
        """A live forecast, in a thread: loading a model and predicting one row takes milliseconds."""
        await asyncio.to_thread(self._on_side_connection, forecasts.run, forecast_id)

    async def simulate(self, simulation_id: int) -> None:
        """A backtest, in a thread: vectorised over a few hundred bars, it takes milliseconds."""
        await asyncio.to_thread(self._on_side_connection, backtests.run, simulation_id)

    def _on_side_connection(self, run, object_id: int) -> None:
        """Forecasts and backtests run one at a time (the predictor's concurrency is 1) on one connection
        kept open: connecting anew cost about as much as the backtest itself. A connection a database
        restart broke fails its job (asking again re-queues it) and is replaced on the next one."""
        with self._side_lock:
            if self._side is None or self._side.closed or self._side.broken:
                self._side = gateway.connect(self.url, f"sfq-worker-{self.instance}-side", autocommit=True)
            run(self._side, object_id)

    async def give_up(self, model_id: int, job_id: int, reason: str) -> None:
        await self._run(gateway.give_up_model(model_id, job_id, reason))

    async def rescue_forever(self) -> None:
        """Keep our heartbeat, hand the jobs of dead workers on, and prune old finished jobs.

        Our own heartbeat goes on here because Procrastinate stops its heartbeat at the start of a
        shutdown, while the running job may still need the grace period to finish.
        """
        last_prune = -math.inf
        while self.worker is None or self.worker.worker_id is None:  # registered within moments of start
            await asyncio.sleep(0.1)
        while True:
            try:
                await self._rescue_once(self.worker.worker_id if self.worker else None)
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await self._run(gateway.prune_finished_jobs(self.settings.job_retention_days), "rescue")
                    last_prune = time.monotonic()
            except Exception as error:  # the database away, or a query refused: try again next beat
                log.warning("rescue failed (%s); will try again", error)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _rescue_once(self, own: int | None) -> None:
        """Our heartbeat, then the training, forecast and backtest jobs of workers silent for too long."""
        if own is not None:
            await self._run(gateway.heartbeat(own, self.host, self.pid, self.instance), "rescue")
        stale_after_s = self.settings.rescue_after_s
        rescued = gateway.rescue_stalled_jobs(stale_after_s, self.settings.max_attempts, own)
        for row in await self._run(rescued, "rescue"):
            log.warning(
                "rescue: model %s job %s lost its worker: %s (new job %s)",
                row["model_id"],
                row["old_job_id"],
                row["outcome"],
                row["new_job_id"],
            )
        for row in await self._run(gateway.rescue_stalled_side_jobs(stale_after_s, own), "rescue"):
            log.warning(
                "rescue: %s %s job %s lost its worker (new job %s)",
                row["task"],
                row["object_id"],
                row["old_job_id"],
                row["new_job_id"],
            )

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.trainer.close)
        for conn in self._conns.values():
            await conn.close()
        if self._side is not None:
            self._side.close()


def limit_threads() -> None:
    """One BLAS/OpenMP thread per training process: N workers on N cores must not oversubscribe."""
    for name, value in THREAD_LIMIT_ENV.items():
        os.environ.setdefault(name, value)


def check_schema(url: str) -> None:
    """Refuse to start on a database `sfq db upgrade` has not prepared, saying so (rather than failing on
    the first query with a missing table)."""
    with gateway.connect(url, "sfq-worker-start") as conn:
        ready = gateway.run(conn, gateway.has_sfq_schema())
        database = conn.info.dbname
    if not ready:
        raise NoSchema(f"database {database!r} has no sfq schema: run `sfq db upgrade` on it first")


def run(instance: int, url: str, settings: Settings) -> int:
    """Serve until stopped; the exit status: 0 when a signal asked, 1 when the worker could not start or
    stopped on its own (its heartbeat or listener lost the database), so that systemd
    (Restart=on-failure) or `sfq workers` starts it again."""
    limit_threads()
    logs.configure(settings.hostname, instance, settings.log_json)
    try:
        check_schema(url)
    except Unavailable as error:  # unreachable, or no sfq schema (NoSchema)
        log.error("worker %s cannot start: %s", instance, error)
        return 1
    return 0 if asyncio.run(_serve(instance, url, settings)) else 1


async def _serve(instance: int, url: str, settings: Settings) -> bool:
    """Run until stopped; True when a signal asked for it."""
    runtime = Runtime(url, instance, settings)
    # Before READY: the fork server imports scikit-learn once and the first training process is forked,
    # so the first job does not wait for either.
    child_pid = await asyncio.get_running_loop().run_in_executor(None, runtime.trainer.ensure_started)
    log.info("worker %s: training process %s started", instance, child_pid)
    app.perform_import_paths()  # registers workers.daemon.tasks
    with app.replace_connector(connector(url, f"sfq-worker-{instance}-queue")):
        async with app.open_async():
            common = {
                "wait": True,
                "listen_notify": True,
                "fetch_job_polling_interval": settings.poll_interval_s,
                "update_heartbeat_interval": settings.heartbeat_s,
                "stalled_worker_timeout": settings.rescue_after_s,
                "additional_context": {"runtime": runtime},
                "install_signal_handlers": False,
            }
            # Training: one job at a time (one core). Forecasts and backtests: beside it (milliseconds
            # each), so that a strategy asking for a prediction does not wait for a training to end.
            trainer = Worker(
                app,
                queues=[TRAINING_QUEUE],
                name=f"worker-{instance}@{runtime.host}",
                concurrency=1,
                **common,
            )
            predictor = Worker(
                app,
                queues=[PREDICTION_QUEUE, SIMULATION_QUEUE],
                name=f"predictor-{instance}@{runtime.host}",
                concurrency=1,
                **common,
            )
            runtime.worker = trainer
            rescuer = asyncio.create_task(runtime.rescue_forever())
            watchdog = asyncio.create_task(notify.watchdog_forever())  # systemd's WatchdogSec=
            try:
                asked = await _run_until_signalled([trainer, predictor], instance, runtime)
            finally:
                rescuer.cancel()
                await runtime.close()
                watchdog.cancel()
    log.info("worker %s stopped%s", instance, "" if asked else " on its own (database lost?)")
    return asked


async def _run_until_signalled(workers: list[Worker], instance: int, runtime: Runtime) -> bool:
    """First SIGTERM/SIGINT: take no new job and let the running one finish within the grace period;
    then, or at a second signal, stop it and put its job back in the queue. When one worker stops on
    its own (database lost), the others stop too, and the daemon exits for its supervisor to restart."""
    loop = asyncio.get_running_loop()
    signals_received = 0
    tasks = [asyncio.create_task(worker.run()) for worker in workers]

    def stop_all() -> None:
        for worker in workers:
            worker.stop()

    def interrupt() -> None:
        runtime.trainer.interrupt(f"worker {instance} shut down")

    def on_signal(signum: int) -> None:
        nonlocal signals_received
        signals_received += 1
        if signals_received == 1:
            grace = runtime.settings.grace_s
            runtime.stopping = True
            notify.notify("STOPPING=1", f"STATUS=stopping: the running job has {grace} s to finish")
            log.info(
                "worker %s: %s received; stopping (running job has %s s to finish)",
                instance,
                signal.Signals(signum).name,
                grace,
            )
            stop_all()
            loop.call_later(grace, interrupt)
        else:
            log.warning("worker %s: second signal, putting the running job back in the queue", instance)
            interrupt()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # worker.run() clears any stale stop request on its first step: re-issue one that came before.
    await asyncio.sleep(0)
    if signals_received:
        stop_all()
    log.info(
        "worker %s ready in process %s on %s (queues %s, %s, %s)",
        instance,
        runtime.pid,
        runtime.host,
        TRAINING_QUEUE,
        PREDICTION_QUEUE,
        SIMULATION_QUEUE,
    )
    notify.notify("READY=1", "STATUS=idle")  # systemd's Type=notify: worker@N is started
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for worker, task in zip(workers, tasks, strict=True):
        if task in done and not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s stopped: %s: %s", worker.worker_name, type(error).__name__, error)
    stop_all()
    await asyncio.gather(*tasks, return_exceptions=True)
    return signals_received > 0
