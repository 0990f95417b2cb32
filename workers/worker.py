"""The worker daemon (`sfq worker N`): one Procrastinate worker with concurrency 1 and one training child.

One daemon per core; systemd starts them as worker@N, `sfq workers` stands in where there is no systemd.
Besides its jobs, every daemon rescues jobs whose worker died (see sql/migrations/0002_resilience.sql)
and prunes finished queue jobs, so there is no cron to install.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any

import psycopg
from procrastinate.worker import Worker
from psycopg.types.json import Jsonb

from queue_app.app import TRAINING_QUEUE, app, connector
from queue_app.config import Settings
from queue_app.db import QUERIES
from workers import artifacts
from workers.child import THREAD_LIMIT_ENV, TrainingFailed, TrainingProcess, TrainingRetry

log = logging.getLogger("sfq.worker")

# Lost connections, serialization failures and deadlocks: retried. Anything else fails the model at once.
TRANSIENT_ERRORS = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
WRITE_RETRIES_S = (
    0.5,
    1,
    2,
    4,
    8,
    16,
    32,
)  # backoff for writing a finished result while the database is away
PRUNE_EVERY_S = 3600


class ModelFailed(Exception):
    """Raised after the model is marked failed, so that Procrastinate records the job as failed too."""


class Requeue(Exception):
    """The job goes back to the queue (shutdown, or a transient database error); the task retries it."""


class Runtime:
    """What a job needs from its daemon: the database, the training child, settings, and who we are."""

    def __init__(self, url: str, instance: int, settings: Settings):
        self.url = url
        self.instance = instance
        self.settings = settings
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.trainer = TrainingProcess(url, settings.max_jobs_per_child)
        self._conn: psycopg.AsyncConnection | None = None

    async def _db(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name=f"sfq-worker-{self.instance}"
            )
        return self._conn

    async def _execute(self, query: str, params: dict[str, Any]) -> tuple | None:
        db = await self._db()
        return await (await db.execute(QUERIES[query], params)).fetchone()

    async def train(self, model_id: int, job_id: int) -> None:
        try:
            row = await self._execute(
                "start_model", {"model_id": model_id, "host": self.host, "pid": self.pid, "job_id": job_id}
            )
        except TRANSIENT_ERRORS as error:
            raise Requeue(f"database unavailable at start: {error}") from None
        if row is None:
            log.info("job %s model %s is no longer queued (cancelled or finished): skipped", job_id, model_id)
            return
        attempt, spec, timeout_s = row
        try:
            child_pid = self.trainer.ensure_started()
        except OSError as error:  # cannot fork now (memory, process limit): another try later
            await self._settle("requeue_model", model_id, attempt, reason=f"no training process: {error}")
            raise Requeue(f"cannot start a training process: {error}") from None
        log.info(
            "job %s model %s starting in process %s on %s (attempt %s, training process %s)",
            job_id,
            model_id,
            self.pid,
            self.host,
            attempt,
            child_pid,
        )
        started = time.perf_counter()
        try:
            result = await self.trainer.train(
                spec, timeout_s or self.settings.timeout_s, self.settings.memory_limit_mb
            )
        except TrainingRetry as again:
            await self._settle("requeue_model", model_id, attempt, reason=str(again))
            log.warning("job %s model %s: %s; back to the queue", job_id, model_id, again)
            raise Requeue(str(again)) from None
        except TrainingFailed as error:
            await self._settle("fail_model", model_id, attempt, error=str(error))
            log.warning("job %s model %s failed in process %s: %s", job_id, model_id, self.pid, error)
            raise ModelFailed(str(error)) from None
        if await self._complete_with_retries(model_id, attempt, result):
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

    async def _complete_with_retries(self, model_id: int, attempt: int, result) -> bool:
        """A finished result survives a database restart: retried with backoff before giving up."""
        for delay in (*WRITE_RETRIES_S, None):
            try:
                return await self._complete(model_id, attempt, result)
            except TRANSIENT_ERRORS as error:
                if delay is None:
                    raise Requeue(f"could not write the result: {error}") from None
                log.warning(
                    "model %s: writing the result failed (%s); retrying in %s s", model_id, error, delay
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _complete(self, model_id: int, attempt: int, result) -> bool:
        """Write every result in one transaction, only if this attempt still holds the model (fencing)."""
        db = await self._db()
        async with db.transaction():
            completed = await (
                await db.execute(
                    QUERIES["complete_model"],
                    {
                        "model_id": model_id,
                        "attempt": attempt,
                        "metrics": Jsonb(result.metrics),
                        "fold_metrics": Jsonb(result.fold_metrics),
                        "timings": Jsonb(result.timings),
                    },
                )
            ).fetchone()
            if completed is None:
                return False
            async with db.cursor() as cursor:
                await cursor.executemany(
                    QUERIES["insert_feature_importance"],
                    [{"model_id": model_id, **row} for row in result.importances],
                )
                await cursor.executemany(
                    QUERIES["insert_prediction"],
                    [{"model_id": model_id, **row} for row in result.predictions],
                )
                await cursor.execute(
                    QUERIES["insert_artifact"],
                    {
                        "model_id": model_id,
                        "format": artifacts.FORMAT,
                        "sha256": result.artifact_sha256,
                        "size": len(result.artifact),
                        "bytes": result.artifact,
                    },
                )
        return True

    async def _settle(self, query: str, model_id: int, attempt: int, **params: str) -> None:
        """Record a failure or a requeue; if the database is away, the rescue will find the job later."""
        try:
            await self._execute(query, {"model_id": model_id, "attempt": attempt, **params})
        except psycopg.Error as error:
            log.error("model %s: could not record %s (%s): %s", model_id, query, params, error)

    async def give_up(self, model_id: int, job_id: int, reason: str) -> None:
        await self._execute("give_up_model", {"model_id": model_id, "job_id": job_id, "error": reason})

    async def rescue_forever(self) -> None:
        """Hand the jobs of dead workers to the queue again, and prune old finished jobs."""
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                db = await self._db()
                rows = await (
                    await db.execute(
                        QUERIES["rescue_stalled_jobs"],
                        {
                            "stale_after_s": self.settings.rescue_after_s,
                            "max_attempts": self.settings.max_attempts,
                        },
                    )
                ).fetchall()
                for model_id, old_job, new_job, outcome in rows:
                    log.warning(
                        "rescue: model %s job %s lost its worker: %s (new job %s)",
                        model_id,
                        old_job,
                        outcome,
                        new_job,
                    )
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await db.execute(
                        QUERIES["prune_finished_jobs"], {"older_than_days": self.settings.job_retention_days}
                    )
                    last_prune = time.monotonic()
            except psycopg.Error as error:
                log.warning("rescue failed (%s); will try again", error)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.trainer.close)
        if self._conn is not None:
            await self._conn.close()


def limit_threads() -> None:
    """One BLAS/OpenMP thread per training process: N workers on N cores must not oversubscribe."""
    for name, value in THREAD_LIMIT_ENV.items():
        os.environ.setdefault(name, value)


def run(instance: int, url: str, settings: Settings) -> None:
    limit_threads()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker-{instance} [%(process)d] %(levelname)s %(message)s"
    )
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    asyncio.run(_serve(instance, url, settings))


async def _serve(instance: int, url: str, settings: Settings) -> None:
    runtime = Runtime(url, instance, settings)
    app.perform_import_paths()  # registers workers.tasks
    with app.replace_connector(connector(url)):
        async with app.open_async():
            worker = Worker(
                app,
                queues=[TRAINING_QUEUE],
                name=f"worker-{instance}@{runtime.host}",
                concurrency=1,
                wait=True,
                listen_notify=True,
                fetch_job_polling_interval=settings.poll_interval_s,
                update_heartbeat_interval=settings.heartbeat_s,
                stalled_worker_timeout=settings.rescue_after_s,
                additional_context={"runtime": runtime},
                install_signal_handlers=False,
            )
            rescuer = asyncio.create_task(runtime.rescue_forever())
            try:
                await _run_until_signalled(worker, instance, runtime)
            finally:
                rescuer.cancel()
                await runtime.close()
    log.info("worker %s stopped", instance)


async def _run_until_signalled(worker: Worker, instance: int, runtime: Runtime) -> None:
    """First SIGTERM/SIGINT: take no new job and let the running one finish within the grace period;
    then, or at a second signal, stop it and put its job back in the queue."""
    loop = asyncio.get_running_loop()
    signals_received = 0
    task = asyncio.create_task(worker.run())

    def interrupt() -> None:
        runtime.trainer.interrupt(f"worker {instance} shut down")

    def on_signal(signum: int) -> None:
        nonlocal signals_received
        signals_received += 1
        if signals_received == 1:
            grace = runtime.settings.grace_s
            log.info(
                "worker %s: %s received; stopping (running job has %s s to finish)",
                instance,
                signal.Signals(signum).name,
                grace,
            )
            worker.stop()
            loop.call_later(grace, interrupt)
        else:
            log.warning("worker %s: second signal, putting the running job back in the queue", instance)
            interrupt()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # worker.run() clears any stale stop request on its first step: re-issue one that came before.
    await asyncio.sleep(0)
    if signals_received:
        worker.stop()
    log.info(
        "worker %s ready in process %s on %s (queue %s)", instance, runtime.pid, runtime.host, TRAINING_QUEUE
    )
    await task
