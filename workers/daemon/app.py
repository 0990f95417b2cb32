"""The Procrastinate app of the worker daemons. Its tasks live in `workers.daemon.tasks`; jobs are deferred by
the database itself (sfq_defer_training, sfq_defer_forecast, sfq_defer_simulation: sql/schema), so the API
and the CLI never defer through Python and never need this app. Queue and task names:
queue_app.vocabulary, shared with the database.
"""

from __future__ import annotations

import asyncio
import json

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["workers.daemon.tasks"])

_WAKE_UP = json.dumps({"type": "job_inserted", "job_id": None})


CATCH_UP_AGAIN_S = 1.0


class CatchUpConnector(procrastinate.PsycopgConnector):
    """Wakes the worker each time its LISTEN starts (at start-up and after a reconnect), and once more
    a moment later.

    A job deferred after the worker's first fetch but before its LISTEN took effect, or while the
    listening connection was down, would otherwise wait for the next poll. The second wake covers a
    first one that lands while the worker is still fetching (the worker clears its wake-up flag after
    each fetch, so that wake would be lost).
    """

    async def _loop_notify(self, on_notification, connection, *args, **kwargs) -> None:
        await on_notification(channel="procrastinate_any_queue_v1", payload=_WAKE_UP)
        again = asyncio.create_task(self._wake_later(on_notification))
        try:
            await super()._loop_notify(on_notification, connection, *args, **kwargs)
        finally:
            again.cancel()

    @staticmethod
    async def _wake_later(on_notification) -> None:
        await asyncio.sleep(CATCH_UP_AGAIN_S)
        await on_notification(channel="procrastinate_any_queue_v1", payload=_WAKE_UP)


def connector(url: str, application_name: str = "sfq-queue") -> procrastinate.PsycopgConnector:
    """Procrastinate's pool (fetching, finishing and retrying jobs) and its LISTEN connections, named
    so that pg_stat_activity shows whose connections they are."""
    return CatchUpConnector(
        conninfo=url, min_size=1, max_size=4, kwargs={"application_name": application_name}
    )
