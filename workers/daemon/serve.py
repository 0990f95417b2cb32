"""The worker daemon's process (`sfq worker N`): two Procrastinate workers, one on the training queue
with concurrency 1 and its training process, one beside it for forecasts and backtests, and the
daemon's rescue loop, until a signal stops it.

One daemon per core; systemd starts them as worker@N, `sfq workers` stands in where there is no systemd.
What each job does is `Runtime`'s (runtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

from procrastinate.manager import get_channel_for_queues
from procrastinate.worker import Worker

from queue_app import gateway, tracing
from queue_app.config import Settings
from queue_app.errors import NoSchema, Unavailable
from queue_app.vocabulary import PREDICTION_QUEUE, SIMULATION_QUEUE, STUDY_QUEUE, TRAINING_QUEUE
from workers.daemon import logs, notify
from workers.daemon.app import DaemonConnector, SpreadPollingWorker, app, own_app
from workers.daemon.child import THREAD_LIMIT_ENV
from workers.daemon.runtime import Runtime

log = logging.getLogger("sfq.worker")
# Procrastinate's own heartbeat of each worker: as good as off (a day), the daemon's beat keeps them.
PROCRASTINATE_HEARTBEAT_S = 86_400


def limit_threads() -> None:
    """One BLAS/OpenMP thread per training process: N workers on N cores must not oversubscribe."""
    for name, value in THREAD_LIMIT_ENV.items():
        os.environ.setdefault(name, value)


def check_schema(url: str, options: dict) -> None:
    """Refuse to start on a database `sfq db upgrade` has not prepared, saying so (rather than failing on
    the first query with a missing table)."""
    with gateway.connect(url, "sfq-worker-start", options) as conn:
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
    tracing.configure("sfq-worker")  # only when the OTEL_* variables ask for traces
    try:
        check_schema(url, settings.connection_options)
    except Unavailable as error:  # unreachable, or no sfq schema (NoSchema)
        log.error("worker %s cannot start: %s", instance, error)
        return 1
    return 0 if asyncio.run(_serve(instance, url, settings)) else 1


async def _serve(instance: int, url: str, settings: Settings) -> bool:
    """Run until stopped; True when a signal asked for it."""
    return await serve([Runtime(url, instance, settings)])


async def serve(runtimes: list[Runtime]) -> bool:
    """Run these daemons on this event loop until stopped; True when a signal asked for it. `sfq worker N`
    runs one; the fleet benchmark (bench/fleet.py) runs many in a process, each with its own connections,
    workers and rescue loop, as separate processes would have them."""
    app.perform_import_paths()  # registers workers.daemon.tasks
    async with contextlib.AsyncExitStack() as stack:
        daemons = [(runtime, await stack.enter_async_context(_daemon(runtime))) for runtime in runtimes]
        watchdog = asyncio.create_task(notify.watchdog_forever())  # systemd's WatchdogSec=
        try:
            asked = await _run_until_signalled(daemons)
        finally:
            watchdog.cancel()
    for runtime in runtimes:
        log.info("worker %s stopped%s", runtime.instance, "" if asked else " on its own (database lost?)")
    return asked


@contextlib.asynccontextmanager
async def _daemon(runtime: Runtime) -> AsyncIterator[list[Worker]]:
    """One daemon's parts, from its training process to its rescue loop, open while the block runs: its
    two Procrastinate workers, on an app and connections of its own (app.own_app)."""
    instance, settings = runtime.instance, runtime.settings
    # Before READY: the fork server imports scikit-learn once and the first training process is forked,
    # so the first job does not wait for either.
    child_pid = await asyncio.get_running_loop().run_in_executor(None, runtime.trainer.ensure_started)
    log.info("worker %s: training process %s started", instance, child_pid)
    training_queues, side_queues = [TRAINING_QUEUE], [PREDICTION_QUEUE, SIMULATION_QUEUE, STUDY_QUEUE]
    channels = list(get_channel_for_queues(training_queues + side_queues))
    queue = DaemonConnector(runtime.url, instance, channels, settings.connection_options, settings.listens)
    daemon_app = own_app(queue)
    async with daemon_app.open_async():
        runtime.queue_pool = queue.pool
        common = {
            "wait": True,
            "listen_notify": settings.listens,  # behind a transaction pooler: polling only
            "fetch_job_polling_interval": settings.poll_interval_s,
            # A running job's cancellation: NOTIFY wakes a listening worker at once; this is the
            # safety net, and, without LISTEN, the delay.
            "abort_job_polling_interval": settings.poll_interval_s,
            # The daemon's beat keeps both workers' heartbeats in one statement (Runtime.rescue_forever,
            # sfq_beat); each worker's own would be one more a beat.
            "update_heartbeat_interval": PROCRASTINATE_HEARTBEAT_S,
            "stalled_worker_timeout": settings.rescue_after_s,
            "additional_context": {"runtime": runtime},
            "install_signal_handlers": False,
        }
        # Training: one job at a time (one core). Forecasts, backtests and study advances: beside it
        # (milliseconds each), so that a strategy asking for a prediction, or a study asking for its
        # next trial, does not wait for a training to end.
        trainer = SpreadPollingWorker(
            daemon_app,
            queues=training_queues,
            name=f"worker-{instance}@{runtime.host}",
            concurrency=1,
            **common,
        )
        predictor = SpreadPollingWorker(
            daemon_app,
            queues=side_queues,
            name=f"predictor-{instance}@{runtime.host}",
            concurrency=1,
            **common,
        )
        runtime.workers = [trainer, predictor]
        rescuer = asyncio.create_task(runtime.rescue_forever())
        try:
            yield [trainer, predictor]
        finally:
            rescuer.cancel()
            await runtime.close()


async def _run_until_signalled(daemons: list[tuple[Runtime, list[Worker]]]) -> bool:
    """First SIGTERM/SIGINT: take no new job and let the running ones finish within the grace period;
    then, or at a second signal, stop them and put their jobs back in the queue. When one worker stops on
    its own (database lost), the others stop too, and the process exits for its supervisor to restart."""
    loop = asyncio.get_running_loop()
    signals_received = 0
    runtimes = [runtime for runtime, _ in daemons]
    workers = [worker for _, own in daemons for worker in own]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]

    def stop_all() -> None:
        for worker in workers:
            worker.stop()

    def interrupt() -> None:
        for runtime in runtimes:
            runtime.trainer.interrupt(f"worker {runtime.instance} shut down")

    def on_signal(signum: int) -> None:
        nonlocal signals_received
        signals_received += 1
        if signals_received == 1:
            grace = runtimes[0].settings.grace_s
            notify.notify("STOPPING=1", f"STATUS=stopping: the running job has {grace} s to finish")
            for runtime in runtimes:
                runtime.stopping = True
                log.info(
                    "worker %s: %s received; stopping (running job has %s s to finish)",
                    runtime.instance,
                    signal.Signals(signum).name,
                    grace,
                )
            stop_all()
            loop.call_later(grace, interrupt)
        else:
            for runtime in runtimes:
                log.warning(
                    "worker %s: second signal, putting the running job back in the queue", runtime.instance
                )
            interrupt()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # worker.run() clears any stale stop request on its first step: re-issue one that came before.
    await asyncio.sleep(0)
    if signals_received:
        stop_all()
    for runtime in runtimes:
        log.info(
            "worker %s ready in process %s on %s (queues %s, %s, %s, %s; %s)",
            runtime.instance,
            runtime.pid,
            runtime.host,
            TRAINING_QUEUE,
            PREDICTION_QUEUE,
            SIMULATION_QUEUE,
            STUDY_QUEUE,
            "LISTEN/NOTIFY"
            if runtime.settings.listens
            else f"polling every {runtime.settings.poll_interval_s:g} s, no LISTEN (SFQ_POOLER)",
        )
    notify.notify("READY=1", "STATUS=idle")  # systemd's Type=notify: worker@N is started
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for worker, task in zip(workers, tasks, strict=True):
        if task in done and not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s stopped: %s: %s", worker.worker_name, type(error).__name__, error)
    stop_all()
    await asyncio.gather(*tasks, return_exceptions=True)
    return signals_received > 0
