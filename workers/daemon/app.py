"""The Procrastinate app of the worker daemons. Its tasks live in `workers.daemon.tasks`; jobs are deferred by
the database itself (sfq_defer_training, sfq_defer_forecast, sfq_defer_simulation: sql/schema), so the API
and the CLI never defer through Python and never need this app. Queue and task names:
queue_app.vocabulary, shared with the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any

import procrastinate
import psycopg
from procrastinate import sql as procrastinate_sql
from procrastinate.connector import Notify
from procrastinate.worker import Worker

from queue_app import gateway

app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["workers.daemon.tasks"])

_WAKE_UP = json.dumps({"type": "job_inserted", "job_id": None})
ANY_QUEUE = "procrastinate_any_queue_v1"
QUEUE_CHANNEL = "procrastinate_queue_v1#"  # + a queue's name: Procrastinate's channel of that queue
WAKE_CHANNEL = "sfq_wake_v1#"  # + a daemon's token: where an enqueue wakes one of its workers (0028)
PROCRASTINATE_FETCH = procrastinate_sql.queries["fetch_job"]
PROCRASTINATE_UNREGISTER = procrastinate_sql.queries["unregister_worker"]

CATCH_UP_AGAIN_S = 1.0
POLL_SPREAD = 0.5


class SpreadPollingWorker(Worker):
    """Procrastinate's worker, each of whose idle waits is drawn within 1 -/+ POLL_SPREAD of the interval:
    the same mean, so the same cost, and no volleys. Procrastinate waits the same time every round, so
    workers that started, or emptied the queue, together poll together, and a job's wait grows with the
    interval whatever the fleet (p99 559 ms at 500 daemons every 5 s; spread, 33 ms: README, "More
    machines"). Procrastinate reads `fetch_job_polling_interval` before each wait (Worker._run_loop)."""

    @property
    def fetch_job_polling_interval(self) -> float:
        return self._poll_interval_s * random.uniform(1 - POLL_SPREAD, 1 + POLL_SPREAD)

    @fetch_job_polling_interval.setter
    def fetch_job_polling_interval(self, seconds: float) -> None:
        self._poll_interval_s = seconds


def own_app(connector: procrastinate.PsycopgConnector) -> procrastinate.App:
    """An App of one daemon's own, on its own connector, with `app`'s tasks (the same registry): several
    daemons can then share a process, each with its own connections (the fleet benchmark, bench/fleet.py),
    where `app.replace_connector` swaps the one app's connector for all. Procrastinate deprecated its
    `with_connector`, which did the same, because a task's link back to `app` defers through `app`'s
    connector; sfq's jobs are deferred by the database, never through a daemon's app."""
    daemon = procrastinate.App(connector=connector, import_paths=app.import_paths)
    daemon.tasks = app.tasks
    daemon.periodic_registry = app.periodic_registry
    return daemon


def connection_name(instance: int, role: str) -> str:
    """What pg_stat_activity's application_name shows for a daemon's connection: `sfq-worker:N:role`."""
    return f"sfq-worker:{instance}:{role}"


class DaemonConnector(procrastinate.PsycopgConnector):
    """Procrastinate's connections of one worker daemon: a pool of one (`queue`: fetching, finishing and
    retrying jobs, the daemon's beat) and one LISTEN connection (`listen`) shared by the daemon's
    workers, where Procrastinate would open one per worker. Only the channels given here are listened to.

    Each time the LISTEN starts (at start-up and after a reconnect), and once more a moment later, every
    worker is woken: a job deferred after a worker's first fetch but before the LISTEN took effect, or
    while the listening connection was down, would otherwise wait for the next poll. The second wake
    covers a first one that lands while the worker is still fetching (the worker clears its wake-up flag
    after each fetch, so that wake would be lost).

    A listening daemon's workers fetch with sfq_fetch_job (sql/schema/queue.sql), which registers a worker
    asleep on its queues before the fetch it may sleep after: enqueues notify only while some worker may
    be asleep. A notification heard while a fetch was on its way, or a fetch that could not register,
    wakes the workers again once the fetch has returned (Procrastinate would clear that wake).

    The listening connection also listens to the daemon's own channel (`wake_channel`), which its workers
    register asleep with: an enqueue wakes one sleeping worker a job there, not every daemon (0028). Its
    notification names the job's queue, and goes to the worker of that queue. A worker that stops (the
    daemon's shutdown, while its other worker may still finish a job) is no longer asleep: an enqueue
    does not wake it in vain.
    """

    def __init__(self, url: str, instance: int, channels: list[str], options: dict[str, Any], listens: bool):
        super().__init__(
            conninfo=url,
            min_size=1,
            max_size=1,
            # Autocommit: each of Procrastinate's queries, and the daemon's beat, is one statement, which
            # without it would be three (BEGIN, the statement, COMMIT), most of an idle fleet's statements.
            kwargs={"application_name": connection_name(instance, "queue"), "autocommit": True, **options},
            configure=self._new_connection,
        )
        self._listens = listens
        self._heard = 0  # notifications dispatched so far
        self._wakes: set[asyncio.Task] = set()
        self._listen_kwargs = {"application_name": connection_name(instance, "listen"), **options}
        self._url = url
        self._channels = channels
        self.wake_channel = WAKE_CHANNEL + secrets.token_hex(8)
        self._queues: dict[int, list[str]] = {}  # worker id -> its queues, once it fetched
        self._subscribers: list[tuple[frozenset[str], Notify]] = []
        self._listener: asyncio.Task | None = None

    async def listen_notify(self, on_notification: Notify, channels: Iterable[str]) -> None:
        """Until cancelled: the notifications of `channels` (a subset of the daemon's), through the one
        listening connection; the listener's error, if it fails, is every subscriber's."""
        wanted = frozenset(channels)
        if not wanted <= set(self._channels):
            raise ValueError(f"channels {sorted(wanted - set(self._channels))} are not the daemon's")
        subscriber = (wanted, on_notification)
        self._subscribers.append(subscriber)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(
                super().listen_notify(self._dispatch, [*self._channels, self.wake_channel])
            )
        try:
            await asyncio.shield(self._listener)
        finally:
            self._subscribers.remove(subscriber)
            if not self._subscribers:
                self._listener.cancel()

    async def execute_query_one_async(self, query: str, **arguments: Any) -> dict[str, Any]:
        if query != PROCRASTINATE_FETCH or not self._listens:
            return await super().execute_query_one_async(query, **arguments)
        heard = self._heard
        self._queues[arguments["worker_id"]] = arguments["queues"]
        call = gateway.fetch_job(arguments["queues"], arguments["worker_id"], self.wake_channel)
        row = await gateway.run_pooled(self.pool, call)
        asleep = row.pop("asleep")
        if row["id"] is None and (asleep is None or self._heard != heard):
            self._wake_soon()
        return row

    async def execute_query_async(self, query: str, **arguments: Any) -> None:
        if query == PROCRASTINATE_UNREGISTER and (queues := self._queues.pop(arguments["worker_id"], None)):
            await gateway.run_pooled(self.pool, gateway.stop_sleeping(queues, arguments["worker_id"]))
        await super().execute_query_async(query, **arguments)

    async def _new_connection(self, connection: psycopg.AsyncConnection) -> None:
        """A new queue connection holds no "asleep" lock (one it replaces took them along): every worker is
        woken to fetch, and register, again."""
        self._wake_soon()

    def _wake_soon(self) -> None:
        """Every worker woken once the running fetch (if any) has returned and cleared its wake-up flag."""
        task = asyncio.get_running_loop().create_task(self._dispatch(ANY_QUEUE, _WAKE_UP))
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _dispatch(self, channel: str, payload: str) -> None:
        self._heard += 1
        if channel == self.wake_channel:  # one worker woken: the one of the job's queue
            channel = QUEUE_CHANNEL + json.loads(payload)["queue"]
        for channels, on_notification in list(self._subscribers):
            if channel == ANY_QUEUE or channel in channels:
                await on_notification(channel=channel, payload=payload)

    @contextlib.asynccontextmanager
    async def _get_standalone_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """The listening connection, under its own name (Procrastinate's would take the pool's)."""
        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **self._listen_kwargs
        ) as connection:
            yield connection

    async def _loop_notify(self, on_notification, connection, *args, **kwargs) -> None:
        await on_notification(channel=ANY_QUEUE, payload=_WAKE_UP)
        again = asyncio.create_task(self._wake_later(on_notification))
        try:
            await super()._loop_notify(on_notification, connection, *args, **kwargs)
        finally:
            again.cancel()

    @staticmethod
    async def _wake_later(on_notification) -> None:
        await asyncio.sleep(CATCH_UP_AGAIN_S)
        await on_notification(channel=ANY_QUEUE, payload=_WAKE_UP)
