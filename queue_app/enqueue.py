"""Requests that change the queue: every caller (HTTP, CLI) runs the same SQL a plain SQL client would
(`sfq_submit` -> INSERT INTO training_requests, `sfq_retrain`, `sfq_evolve`, `sfq_cancel_model`, ...),
and gets the database's refusals back as exceptions that say what is wrong."""

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
    target_col: str


class RequestRejected(Exception):
    """The database refused the request; `field` names what is wrong."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class NotFound(Exception):
    """No such model (or forecast)."""


class Conflict(Exception):
    """The model is not in a state that allows this (cancelling a finished model, predicting from a
    model that is not trained)."""


def translate(error: psycopg.Error) -> Exception | None:
    """The user-facing error inside a database error, or None when it is not about the request."""
    sqlstate = error.sqlstate or ""
    message = error.diag.message_primary or str(error)
    if sqlstate.startswith("22") or sqlstate in ("23502", "23514"):
        return RequestRejected(error.diag.column_name, message)
    if sqlstate == "P0002":
        return NotFound(message)
    if sqlstate == "55000":
        return Conflict(message)
    return None


def run(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One named query in its own transaction; the database's refusals raised as our exceptions."""
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(QUERIES[query], params).fetchall()
    except psycopg.Error as error:
        raise (translate(error) or error) from None


async def run_async(
    conn: psycopg.AsyncConnection, query: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(QUERIES[query], params)
            return await cursor.fetchall()
    except psycopg.Error as error:
        raise (translate(error) or error) from None


def request_params(request: Any, via: str) -> dict[str, Any]:
    return {"request": json.dumps(request), "via": via}


def submit(conn: psycopg.Connection, request: dict[str, Any], via: str) -> Submission:
    return Submission(**run(conn, "submit", request_params(request, via))[0])


async def submit_async(conn: psycopg.AsyncConnection, request: dict[str, Any], via: str) -> Submission:
    return Submission(**(await run_async(conn, "submit", request_params(request, via)))[0])
