"""The worker daemon (`sfq worker N`): one Procrastinate worker with concurrency 1 and one training child.

One daemon per core; systemd starts them as worker@N, `sfq workers` stands in where there is no systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import psycopg
from procrastinate.worker import Worker
from psycopg.types.json import Jsonb

from queue_app.app import TRAINING_QUEUE, app, connector
from queue_app.db import QUERIES
from workers.child import THREAD_LIMIT_ENV, TrainingFailed, TrainingProcess

log = logging.getLogger("sfq.worker")


class ModelFailed(Exception):
    """Raised after the model is marked failed, so that Procrastinate records the job as failed too."""


class Runtime:
    """What a job needs from its daemon: the database, the training child, and who we are."""

    def __init__(self, url: str, instance: int, max_jobs_per_child: int):
        self.url = url
        self.instance = instance
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.trainer = TrainingProcess(url, max_jobs_per_child)
        self._conn: psycopg.AsyncConnection | None = None

    async def _db(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name=f"sfq-worker-{self.instance}"
            )
        return self._conn

    async def train(self, model_id: int, job_id: int) -> None:
        db = await self._db()
        row = await (
            await db.execute(
                QUERIES["start_model"],
                {"model_id": model_id, "host": self.host, "pid": self.pid, "job_id": job_id},
            )
        ).fetchone()
        if row is None:
            log.info("job %s model %s is no longer queued (cancelled or finished): skipped", job_id, model_id)
            return
        attempt, spec = row
        child_pid = self.trainer.ensure_started()
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
            result = await self.trainer.train(spec)
            written = await self._complete(model_id, attempt, result)
        except TrainingFailed as error:
            await self._fail(model_id, str(error))
            log.warning("job %s model %s failed in process %s: %s", job_id, model_id, self.pid, error)
            raise ModelFailed(str(error)) from None
        except BaseException as error:  # interrupted (shutdown) or a database error: never leave it running
            await self._fail(model_id, f"interrupted: {type(error).__name__}: {error}".rstrip(": "))
            raise
        elapsed = time.perf_counter() - started
        if written:
            log.info("job %s model %s completed in process %s in %.2f s", job_id, model_id, self.pid, elapsed)
        else:
            log.warning(
                "job %s model %s finished but was no longer running (attempt %s): result dropped",
                job_id,
                model_id,
                attempt,
            )

    async def _complete(self, model_id: int, attempt: int, result) -> bool:
        """Write every result in one transaction, only if this attempt still holds the model."""
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
                        "format": "skops",
                        "sha256": result.artifact_sha256,
                        "size": len(result.artifact),
                        "bytes": result.artifact,
                    },
                )
        return True

    async def _fail(self, model_id: int, reason: str) -> None:
        try:
            db = await self._db()
            await db.execute(QUERIES["fail_model"], {"model_id": model_id, "error": reason})
        except psycopg.Error as error:
            log.error("model %s: could not record its failure (%s): %s", model_id, reason, error)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.trainer.close)
        if self._conn is not None:
            await self._conn.close()


def limit_threads() -> None:
    """One BLAS/OpenMP thread per training process: N workers on N cores must not oversubscribe."""
    for name, value in THREAD_LIMIT_ENV.items():
        os.environ.setdefault(name, value)


def run(instance: int, url: str, max_jobs_per_child: int, poll_interval_s: float) -> None:
    limit_threads()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker-{instance} [%(process)d] %(levelname)s %(message)s"
    )
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    asyncio.run(_serve(instance, url, max_jobs_per_child, poll_interval_s))


async def _serve(instance: int, url: str, max_jobs_per_child: int, poll_interval_s: float) -> None:
    runtime = Runtime(url, instance, max_jobs_per_child)
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
                fetch_job_polling_interval=poll_interval_s,
                additional_context={"runtime": runtime},
                install_signal_handlers=False,
            )
            try:
                await _run_until_signalled(worker, instance, runtime)
            finally:
                await runtime.close()
    log.info("worker %s stopped", instance)


async def _run_until_signalled(worker: Worker, instance: int, runtime: Runtime) -> None:
    """First SIGTERM/SIGINT: take no new job and finish the running one. Second: interrupt it."""
    loop = asyncio.get_running_loop()
    signals_received = 0
    task = asyncio.create_task(worker.run())

    def on_signal(signum: int) -> None:
        nonlocal signals_received
        signals_received += 1
        if signals_received == 1:
            log.info(
                "worker %s: %s received, stopping after the running job",
                instance,
                signal.Signals(signum).name,
            )
            worker.stop()
        else:
            log.warning("worker %s: second signal, interrupting the running job", instance)
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # worker.run() clears any stale stop request on its first step: re-issue one that came before.
    await asyncio.sleep(0)
    if signals_received:
        worker.stop()
    log.info(
        "worker %s ready in process %s on %s (queue %s)", instance, runtime.pid, runtime.host, TRAINING_QUEUE
    )
    try:
        await task
    except asyncio.CancelledError:
        if signals_received < 2:
            raise
