"""Enqueueing: every caller goes through the same SQL (`sfq_submit` -> INSERT INTO training_requests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from queue_app.db import QUERIES


@dataclass(frozen=True)
class Submission:
    model_id: int
    fingerprint: str
    deduplicated: bool
    request_id: int


class RequestRejected(Exception):
    """The database refused the request; `field` names what is wrong."""

    def __init__(self, field: str | None, message: str, not_supported: bool = False):
        super().__init__(message)
        self.field = field
        self.message = message
        self.not_supported = not_supported


def rejection(error: psycopg.Error) -> RequestRejected | None:
    """The request error inside a database error, or None when the error is not about the request."""
    sqlstate = error.sqlstate or ""
    if not (sqlstate.startswith("22") or sqlstate in ("0A000", "23502", "23514")):
        return None
    return RequestRejected(
        error.diag.column_name, error.diag.message_primary or str(error), sqlstate == "0A000"
    )


def _params(request: dict[str, Any], via: str) -> dict[str, Any]:
    return {"request": json.dumps(request), "via": via}


def submit(conn: psycopg.Connection, request: dict[str, Any], via: str) -> Submission:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(QUERIES["submit"], _params(request, via)).fetchone()
    except psycopg.Error as error:
        raise (rejection(error) or error) from None
    return Submission(**row)


async def submit_async(conn: psycopg.AsyncConnection, request: dict[str, Any], via: str) -> Submission:
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(QUERIES["submit"], _params(request, via))
            row = await cursor.fetchone()
    except psycopg.Error as error:
        raise (rejection(error) or error) from None
    return Submission(**row)
