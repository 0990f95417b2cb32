"""POST /train's submissions, gathered: the requests that arrive while a statement is running go into
the next one together (sfq_submit_many, sql/schema/requests.sql), so that they share one statement, one
run of the statement trigger and one commit: at concurrency 50 the database spends about a third of the
time a request that it spends on one alone (docs/BENCHMARKS.md). A request that finds no statement
running goes at once, alone, as before (sfq_submit): nothing waits for company.

Each request still gets its own answer, after the commit of the statement that holds it. When a gathered
statement is refused (one bad request refuses all of it), each of its requests is submitted alone, so
that the bad one gets its own 4xx and the others are enqueued. An unavailable database is every
request's answer at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psycopg_pool

from queue_app import gateway
from queue_app.errors import NoSchema, Unavailable
from queue_app.gateway import Submission

MOST = 100  # requests in one statement at most
STATEMENTS = 2  # gathered statements at once: one commits while the next runs (not tuned further)

Waiting = tuple[Mapping[str, Any], asyncio.Future]


class Gathering:
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, via: str) -> None:
        self.pool = pool
        self.via = via
        self.waiting: list[Waiting] = []
        self.running: set[asyncio.Task] = set()

    async def submit(self, request: Mapping[str, Any]) -> Submission:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((request, answer))
        if len(self.running) < STATEMENTS:
            self.running.add(asyncio.create_task(self._drain()))
        return await answer

    async def _drain(self) -> None:
        """Statements of the requests waiting, one after the other, until none is left. It leaves `running`
        as it finds none left, with no await in between: a request that comes after that starts another."""
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:MOST], self.waiting[MOST:]
                try:
                    await self._submit(batch)
                except BaseException as error:  # never leave a request without an answer
                    for _, answer in batch:
                        _answer(answer, error=error)
                    if not isinstance(error, Exception):
                        raise
        finally:
            self.running.discard(asyncio.current_task())

    async def _submit(self, batch: list[Waiting]) -> None:
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        try:
            many = gateway.submit_many([request for request, _ in batch], self.via)
            submissions = await gateway.run_pooled(self.pool, many)
        except (Unavailable, NoSchema) as error:
            for _, answer in batch:
                _answer(answer, error=error)
            return
        except Exception:  # one request's fault, most likely: each alone, each with its own answer
            await asyncio.gather(*(self._alone(waiting) for waiting in batch))
            return
        for (_, answer), submission in zip(batch, submissions, strict=True):
            _answer(answer, submission)

    async def _alone(self, waiting: Waiting) -> None:
        request, answer = waiting
        try:
            _answer(answer, await gateway.run_pooled(self.pool, gateway.submit(request, self.via)))
        except Exception as error:
            _answer(answer, error=error)


def _answer(
    answer: asyncio.Future, submission: Submission | None = None, error: BaseException | None = None
) -> None:
    """A request's answer, unless its client went away (its handler cancelled: the request is enqueued
    all the same, as one whose client hung up after sending it)."""
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(submission)
