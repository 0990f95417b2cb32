"""The one gateway to the database. Every query sfq runs is a named query in `sql/queries.sql` or
`sql/legacy.sql` (a `-- name --` header, then a one-line description), and has one typed function here
that says what it takes and what it returns. A function builds a `Call`; `run` (sync) or `run_async`
executes it, and database errors become sfq's errors (queue_app.errors) here, once, from their SQLSTATE.

    model = gateway.run(conn, gateway.get_model(12))          # the CLI
    model = await gateway.run_async(conn, gateway.get_model(12))   # the API

The few operations of several statements (a training's result, a bars import, COPY) are functions that
take the connection. The schema itself (migrations, sql/schema) is applied by `queue_app.db`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, Generic, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from queue_app.errors import (
    Conflict,
    Forbidden,
    Malformed,
    NoSchema,
    NotFound,
    Rejected,
    Retry,
    Unavailable,
)
from queue_app.params import ModelQuery

T = TypeVar("T")
Row = dict[str, Any]

_HEADER = re.compile(r"^-- ([a-z_0-9]+) --$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: str


def parse_queries(text: str) -> dict[str, Query]:
    """The named queries of a .sql file: each a `-- name --` header, a `-- description` line, the SQL."""
    parts = _HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        comments = [line for line in lines if line.startswith("--")]
        description = comments[0].removeprefix("--").strip() if comments else ""
        queries[name] = Query(name, description, body.strip())
    return queries


def sql_text(name: str) -> str:
    return (resources.files("sql") / name).read_text(encoding="utf-8")


QUERIES: dict[str, Query] = {
    **parse_queries(sql_text("queries.sql")),
    **parse_queries(sql_text("legacy.sql")),
}


def connect(
    url: str, application_name: str = "sfq", options: Mapping[str, Any] | None = None, **kwargs: Any
) -> psycopg.Connection:
    """A connection named `application_name`; `options` (Settings.connection_options) override."""
    try:
        return psycopg.connect(url, **{"application_name": application_name, **kwargs, **(options or {})})
    except psycopg.OperationalError as error:
        raise Unavailable("cannot reach the database", str(error).strip()) from None


# ---------------------------------------------------------------------------------------------------
# Running a call, and what database errors mean.


@dataclass(frozen=True)
class Call(Generic[T]):
    """One named query with its parameters, and how its rows become the result."""

    query: str
    params: Mapping[str, Any] = field(default_factory=dict)
    shape: Callable[[list[Any]], T] = list  # type: ignore[assignment]
    tuples: bool = False  # rows as tuples (bars for a DataFrame) rather than dicts
    rowcount: bool = False  # the result is shape(the number of rows changed): a statement without RETURNING
    # SQL composed into the query's {name} placeholders: what a plan depends on and a parameter cannot be
    # (a sort order, the expression an index has), from a fixed vocabulary, never from the request's text
    compose: Mapping[str, pgsql.Composable] | None = None

    def statement(self) -> str | pgsql.Composed:
        text = QUERIES[self.query].sql
        return pgsql.SQL(text).format(**self.compose) if self.compose else text


def translate(error: psycopg.Error) -> Exception:
    """The sfq error a database error means, or the error itself when it means nothing to a user."""
    sqlstate = error.sqlstate or ""
    message = error.diag.message_primary or str(error).strip()
    if sqlstate.startswith("22") or sqlstate in ("23502", "23514"):
        return Rejected(message, error.diag.column_name)
    if sqlstate == "P0002":
        return NotFound(message)
    if sqlstate == "55000":
        return Conflict(message)
    if sqlstate == "42501":  # insufficient privilege (a submitter moving a production alias)
        return Forbidden(message)
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock
        return Retry("conflicting concurrent change; nothing was done, try again", message)
    if sqlstate in ("42P01", "42883"):  # undefined table or function
        return NoSchema("the database has no sfq schema yet; run `sfq db upgrade`", message)
    if isinstance(error, psycopg.OperationalError):
        return Unavailable("database unavailable", message)
    return error


def _result(call: Call[T], cursor: psycopg.Cursor | psycopg.AsyncCursor, rows: list[Any]) -> T:
    return call.shape(cursor.rowcount if call.rowcount else rows)


def run(conn: psycopg.Connection, call: Call[T]) -> T:
    try:
        with conn.cursor(row_factory=tuple_row if call.tuples else dict_row) as cursor:
            cursor.execute(call.statement(), call.params)
            return _result(call, cursor, cursor.fetchall() if cursor.description else [])
    except psycopg.Error as error:
        raise translate(error) from None


async def run_async(conn: psycopg.AsyncConnection, call: Call[T]) -> T:
    try:
        async with conn.cursor(row_factory=tuple_row if call.tuples else dict_row) as cursor:
            await cursor.execute(call.statement(), call.params)
            return _result(call, cursor, await cursor.fetchall() if cursor.description else [])
    except psycopg.Error as error:
        raise translate(error) from None


@contextlib.asynccontextmanager
async def pooled(pool: psycopg_pool.AsyncConnectionPool, timeout: float | None = None) -> AsyncIterator:
    """A connection of the API's pool; a pool that cannot connect is the database being unavailable."""
    try:
        async with pool.connection(timeout=timeout) as conn:
            yield conn
    except psycopg_pool.PoolTimeout as error:
        raise Unavailable("database unavailable", str(error)) from None
    except psycopg.OperationalError as error:
        raise translate(error) from None


def open_pool(
    url: str, size: int, application_name: str, options: Mapping[str, Any] | None = None
) -> psycopg_pool.AsyncConnectionPool:
    """The API's pool; `options`: psycopg's, for each connection (Settings.connection_options)."""
    return psycopg_pool.AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        timeout=5,
        kwargs={"autocommit": True, "application_name": application_name, **(options or {})},
    )


def _json(value: Any) -> str:
    """A request as JSON text; a body nested too deeply to encode again is the client's fault."""
    try:
        return json.dumps(value)
    except RecursionError:
        raise Malformed("request body is nested too deeply") from None


def _one(rows: list[Row]) -> Row:
    (row,) = rows
    return row


def _first(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


def _value(rows: list[Row]) -> Any:
    (row,) = rows
    return next(iter(row.values()))


def _found(rows: list[Row]) -> bool:
    return bool(rows)


def _nothing(rows: list[Row]) -> None:
    return None


# ---------------------------------------------------------------------------------------------------
# Requests: every way in runs the SQL a plain SQL client would.


@dataclass(frozen=True)
class Submission:
    model_id: int
    fingerprint: str
    deduplicated: bool
    request_id: int
    target_col: str


def _submissions(rows: list[Row]) -> list[Submission]:
    return [Submission(**row) for row in rows]


def _submission(rows: list[Row]) -> Submission:
    (row,) = rows
    return Submission(**row)


def submit(request: Mapping[str, Any], via: str) -> Call[Submission]:
    return Call("submit", {"request": _json(request), "via": via}, _submission)


def submit_many(requests: Sequence[Mapping[str, Any]], via: str) -> Call[list[Submission]]:
    return Call("submit_many", {"requests": _json(list(requests)), "via": via}, _submissions)


def submit_batch(request: Mapping[str, Any], via: str) -> Call[list[Submission]]:
    return Call("submit_batch", {"request": _json(request), "via": via}, _submissions)


def retrain(model_id: int, force: bool, via: str) -> Call[Submission]:
    return Call("retrain", {"model_id": model_id, "force": force, "via": via}, _submission)


def evolve(parent_model_id: int, overrides: Any, via: str) -> Call[Submission]:
    params = {"parent_model_id": parent_model_id, "overrides": _json(overrides), "via": via}
    return Call("evolve", params, _submission)


def model_jobs(model_ids: Sequence[int]) -> Call[list[int]]:
    return Call("model_jobs", {"model_ids": list(model_ids)}, lambda rows: [row["job_id"] for row in rows])


def cancel_model(model_id: int) -> Call[Row]:
    return Call("cancel_model", {"model_id": model_id}, _one)


def request_forecast(model_id: int) -> Call[Row]:
    return Call("request_forecast", {"model_id": model_id}, _one)


def request_lockbox(model_id: int) -> Call[Row]:
    return Call("request_lockbox", {"model_id": model_id}, _one)


def request_simulation(model_id: int, strategy: Any, params: Any, priority: int) -> Call[Row]:
    query = {"model_id": model_id, "strategy": strategy, "params": _json(params), "priority": priority}
    return Call("request_simulation", query, _one)


def submit_sweep(base: Any, grid: Any, priority: int, via: str) -> Call[Row]:
    params = {"base": _json(base), "grid": _json(grid), "priority": priority, "via": via}
    return Call("submit_sweep", params, _one)


# ---------------------------------------------------------------------------------------------------
# Reading models and their results.


def _model(rows: list[Row]) -> Row | None:
    """A model as its readers see it: `spec` whole, not `spec_extra` (the part of it that no column holds,
    which is how the row stores it since 0031)."""
    if not rows:
        return None
    model = dict(rows[0])
    del model["spec_extra"]
    return model


def get_model(model_id: int) -> Call[Row | None]:
    return Call("get_model", {"model_id": model_id}, _model)


def model_status(model_id: int) -> Call[str | None]:
    return Call("model_status", {"model_id": model_id}, lambda rows: rows[0]["status"] if rows else None)


def model_features(model_id: int) -> Call[list[Row]]:
    return Call("model_features", {"model_id": model_id})


def model_predictions(model_id: int) -> Call[list[Row]]:
    return Call("model_predictions", {"model_id": model_id})


def model_artifact(model_id: int) -> Call[Row | None]:
    return Call("model_artifact", {"model_id": model_id}, _first)


def _chunk(rows: list[Row]) -> bytes | None:
    return bytes(rows[0]["bytes"]) if rows else None


def blob_chunk(sha256: str, n: int) -> Call[bytes | None]:
    """One chunk of a blob; None when it is gone (collected since its model's row was read)."""
    return Call("blob_chunk", {"sha256": sha256, "n": n}, _chunk)


def evict_artifacts(
    older_than_days: int,
    keep_top: int,
    metric: str,
    descending: bool,
    model_ids: Sequence[int] | None,
    dry_run: bool,
) -> Call[list[Row]]:
    params = {
        "older_than_days": older_than_days,
        "keep_top": keep_top,
        "metric": metric,
        "descending": descending,
        "model_ids": list(model_ids) if model_ids else None,
        "dry_run": dry_run,
    }
    return Call("evict_artifacts", params)


def collect_blobs() -> Call[list[Row]]:
    return Call("collect_blobs")


def lineage(model_id: int) -> Call[list[Row]]:
    return Call("lineage", {"model_id": model_id})


def metric_key(metric: str | None) -> pgsql.Composable:
    """A stored metric's value as the leaderboard sorts on it (NULL when not a number), the expression its
    index has (sql/schema/tables.sql models_metric_*); NULL for the id order."""
    if metric is None:
        return pgsql.SQL("NULL::double precision")
    name = pgsql.Literal(metric)
    value = "(CASE WHEN jsonb_typeof(metrics -> {name}) = 'number' THEN (metrics ->> {name})::float8 END)"
    return pgsql.SQL(value).format(name=name)


@dataclass(frozen=True)
class Counted:
    """What the counters say of a leaderboard's filters (count_models): the models that match (`total`), the
    completed ones among them, and the completed models and all models in the database."""

    total: int
    completed: int
    all_completed: int
    everything: int

    def walks(self, part: int, wanted: int) -> bool | None:
        """How list_models reads a part of a page that ends `wanted` rows in: None, not at all (no model
        counted); True, walking an index in the page's order until the page is full (about wanted x c / m
        rows for m matching models among the c it walks), or False, reading the m matching models through
        the filters' indexes and sorting them, when that is fewer rows (m x m < wanted x c): a symbol with
        an algorithm nobody ran on it walked the whole metric index, 2.2 s at 1 M models."""
        matching, among = (self.completed, self.all_completed) if part == 0 else (self.total, self.everything)
        if matching == 0:
            return None
        return matching * matching >= wanted * among


def list_models(query: ModelQuery, counted: Counted) -> Call[list[Row]]:
    """A page of the leaderboard, each part read the way `counted` (count_models of the same query) says."""
    ascending = query.order == "asc"
    compose = {
        "key": metric_key(None if query.sort == "id" else query.sort),
        "order": pgsql.SQL("ASC" if ascending else "DESC"),
        "after": pgsql.SQL(">" if ascending else "<"),
    }
    for part in (0, 1):
        walks = counted.walks(part, query.limit + query.offset)
        compose[f"walk{part}"] = pgsql.Literal(walks is True)
        compose[f"sort{part}"] = pgsql.Literal(walks is False)
    return Call("list_models", query.sql_params(), compose=compose)


def count_models(query: ModelQuery) -> Call[Counted]:
    return Call("count_models", query.sql_params(), lambda rows: Counted(**rows[0]))


def leaderboard(conn: psycopg.Connection, query: ModelQuery) -> list[Row]:
    """A page of the leaderboard on one connection: its counts, then the page read as they say."""
    return run(conn, list_models(query, run(conn, count_models(query))))


def models_progress(model_ids: Sequence[int]) -> Call[list[Row]]:
    return Call("models_progress", {"model_ids": list(model_ids)})


def unfinished_models() -> Call[list[int]]:
    return Call("unfinished_models", {}, lambda rows: [row["id"] for row in rows])


def get_forecast(forecast_id: int) -> Call[Row | None]:
    return Call("get_forecast", {"forecast_id": forecast_id}, _first)


def get_simulation(simulation_id: int) -> Call[Row | None]:
    return Call("get_simulation", {"simulation_id": simulation_id}, _first)


def model_simulations(model_id: int) -> Call[list[Row]]:
    return Call("model_simulations", {"model_id": model_id})


def default_backtest(model_id: int) -> Call[Row | None]:
    return Call("default_backtest", {"model_id": model_id}, _first)


def buy_and_hold(symbol: str, timeframe: str, start: datetime, end: datetime) -> Call[list[Row]]:
    params = {"symbol": symbol, "timeframe": timeframe, "start": start, "end": end}
    return Call("buy_and_hold", params)


def compared_models(model_ids: Sequence[int]) -> Call[list[Row]]:
    return Call("compared_models", {"model_ids": list(model_ids)})


def default_backtests(model_ids: Sequence[int]) -> Call[dict[int, Row]]:
    """Each model's default backtest by model id (a model without one is absent), in one statement."""
    return Call(
        "default_backtests", {"model_ids": list(model_ids)}, lambda rows: {r["model_id"]: r for r in rows}
    )


def get_sweep(sweep_id: int) -> Call[Row | None]:
    return Call("get_sweep", {"sweep_id": sweep_id}, _first)


def sweep_progress(sweep_id: int) -> Call[dict[str, int]]:
    return Call(
        "sweep_progress", {"sweep_id": sweep_id}, lambda rows: {r["status"]: r["models"] for r in rows}
    )


def sweep_models(sweep_id: int) -> Call[list[Row]]:
    return Call("sweep_models", {"sweep_id": sweep_id})


def sweep_equity_curves(sweep_id: int) -> Call[list[Row]]:
    return Call("sweep_equity_curves", {"sweep_id": sweep_id})


def recent_sweeps(limit: int) -> Call[list[Row]]:
    return Call("recent_sweeps", {"limit": limit})


def symbols() -> Call[list[Row]]:
    return Call("symbols")


# ---------------------------------------------------------------------------------------------------
# What operators watch (`sfq status`, GET /metrics, the dashboard's overview).


def status_workers() -> Call[list[Row]]:
    return Call("status_workers")


def queue_depth() -> Call[list[Row]]:
    return Call("queue_depth")


def throughput(minutes: int) -> Call[list[Row]]:
    return Call("throughput", {"minutes": minutes})


def recent_failures(limit: int) -> Call[list[Row]]:
    return Call("recent_failures", {"limit": limit})


def duration_histogram() -> Call[list[Row]]:
    return Call("duration_histogram")


def finished_recently(minutes: int) -> Call[Row]:
    return Call("finished_recently", {"minutes": minutes}, _one)


def ping() -> Call[Any]:
    return Call("ping", {}, _value)


def has_sfq_schema() -> Call[bool]:
    return Call("has_sfq_schema", {}, _value)


# ---------------------------------------------------------------------------------------------------
# The worker daemon: an attempt's lifecycle, fenced by the model's attempt number.


def start_model(model_id: int, job_id: int, host: str, pid: int) -> Call[Row | None]:
    params = {"model_id": model_id, "job_id": job_id, "host": host, "pid": pid}
    return Call("start_model", params, _first)


def report_progress(model_id: int, attempt: int, phase: str, fraction: float) -> Call[None]:
    params = {"model_id": model_id, "attempt": attempt, "phase": phase, "fraction": fraction}
    return Call("report_progress", params, _nothing)


def fail_model(model_id: int, attempt: int, error: str) -> Call[bool]:
    return Call("fail_model", {"model_id": model_id, "attempt": attempt, "error": error}, _found)


def prune_model(model_id: int, attempt: int, reason: str, fold_metrics: Any) -> Call[bool]:
    params = {"model_id": model_id, "attempt": attempt, "reason": reason, "fold_metrics": Jsonb(fold_metrics)}
    return Call("prune_model", params, _found)


def requeue_model(model_id: int, attempt: int, reason: str) -> Call[bool]:
    return Call("requeue_model", {"model_id": model_id, "attempt": attempt, "reason": reason}, _found)


def give_up_model(model_id: int, job_id: int, error: str) -> Call[None]:
    params = {"model_id": model_id, "job_id": job_id, "error": error}
    return Call("give_up_model", params, _nothing)


def fetch_job(queues: Sequence[str], worker_id: int, channel: str | None) -> Call[Row]:
    """A listening worker's fetch in place of Procrastinate's: on the connection whose session holds the
    worker's "asleep" locks (sql/schema/queue.sql, sfq_fetch_job); `channel`: the one its daemon listens to,
    where an enqueue wakes this worker alone."""
    params = {"queues": list(queues), "worker_id": worker_id, "channel": channel}
    return Call("fetch_job", params, _one)


def stop_sleeping(queues: Sequence[str], worker_id: int) -> Call[None]:
    """A listening worker that stops is no longer asleep: an enqueue wakes another (sfq_wake_up)."""
    return Call("stop_sleeping", {"queues": list(queues), "worker_id": worker_id}, _nothing)


def beat(
    workers: Sequence[int],
    host: str,
    pid: int,
    instance: int,
    stale_after_s: float,
    max_attempts: int,
    round_every_s: float,
) -> Call[list[Row]]:
    """A daemon's beat (sql/schema/queue.sql, sfq_beat): the heartbeats of `workers` (the training worker's
    first), and the fleet's round if no daemon ran it for `round_every_s`: its rows (`kind`, `what`)."""
    params = {
        "workers": list(workers),
        "host": host,
        "pid": pid,
        "instance": instance,
        "stale_after_s": stale_after_s,
        "max_attempts": max_attempts,
        "round_every_s": round_every_s,
    }
    return Call("beat", params)


def prune_finished_jobs(older_than_s: int, batch: int) -> Call[int]:
    return Call("prune_finished_jobs", {"older_than_s": older_than_s, "batch": batch}, _value)


def prune_requests(older_than_s: int, batch: int) -> Call[int]:
    return Call("prune_requests", {"older_than_s": older_than_s, "batch": batch}, _value)


def may_vacuum_queue() -> Call[bool]:
    return Call("may_vacuum_queue", {}, _value)


def vacuum_queue() -> Call[None]:
    return Call("vacuum_queue", {}, _nothing)


def analyze_jobs() -> Call[None]:
    return Call("analyze_jobs", {}, _nothing)


def may_vacuum_beats() -> Call[bool]:
    return Call("may_vacuum_beats", {}, _value)


def vacuum_beats() -> Call[None]:
    return Call("vacuum_beats", {}, _nothing)


def load_bars(symbol: str, timeframe: str, data_end: Any, limit: int) -> Call[list[tuple]]:
    params = {"symbol": symbol, "timeframe": timeframe, "data_end": data_end, "limit": limit}
    return Call("load_bars", params, tuples=True)


def load_context_bars(
    symbol: str, timeframe: str, data_end: Any, since: Any, limit: int
) -> Call[list[tuple]]:
    params = {"symbol": symbol, "timeframe": timeframe, "data_end": data_end, "since": since, "limit": limit}
    return Call("load_context_bars", params, tuples=True)


def _importances(model_id: int, ranked: list[dict[str, Any]]) -> dict[str, Any]:
    """A training's importances (every feature's, ranked 1..n, by one method) as model_features' row."""
    return {
        "model_id": model_id,
        "method": ranked[0]["method"],
        "features": [row["feature"] for row in ranked],
        "importances": [row["importance"] for row in ranked],
    }


def _result_writes(model_id: int, result: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """What a training's result writes after complete_model, by named query (each with its rows); then
    its file (_write_blob and insert_artifact)."""
    return [
        ("insert_feature_importances", [_importances(model_id, result.importances)]),
        *_series_writes(model_id, _series(result)),
        ("request_default_simulation", [{"model_id": model_id}]),
    ]


# The size of a blob's chunks (blob_chunks rows): a file of any size is stored and read a chunk at a time.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class BlobWrite:
    """A model file to link to its model: its bytes' SHA-256 and size, and either the bytes themselves
    (`data`, written to blob_chunks when the blob is new) or the URL of the store outside PostgreSQL that
    holds them already (`location`)."""

    sha256: str
    size: int
    data: bytes | None = None
    location: str | None = None

    def chunk_count(self) -> int:
        return 0 if self.location else max(1, -(-self.size // CHUNK_BYTES))

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The new blob's chunk rows: slices of one memoryview (no copy of the file)."""
        view = memoryview(self.data or b"")
        for n in range(self.chunk_count()):
            yield {"sha256": self.sha256, "n": n, "bytes": view[n * CHUNK_BYTES : (n + 1) * CHUNK_BYTES]}

    def row(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "chunks": self.chunk_count(),
            "location": self.location,
        }


def _blob_of(result: Any, location: str | None) -> BlobWrite:
    """The result's file as a blob: its bytes, or where the worker stored them outside already."""
    data = None if location else result.artifact
    return BlobWrite(result.artifact_sha256, len(result.artifact), data, location)


def _write_blob(cursor: psycopg.Cursor, blob: BlobWrite) -> None:
    cursor.execute(QUERIES["insert_blob"].sql, blob.row())
    if cursor.fetchone()[0]:  # new: its bytes, a chunk a statement (one chunk in flight at a time)
        for chunk in blob.chunks():
            cursor.execute(QUERIES["insert_blob_chunk"].sql, chunk)


def _link_blob(cursor: psycopg.Cursor, model_id: int, blob: BlobWrite, artifact_format: str) -> None:
    """The blob stored (unless the same bytes are), then recorded as the model's file."""
    _write_blob(cursor, blob)
    row = {"model_id": model_id, "format": artifact_format, "sha256": blob.sha256, "size": blob.size}
    cursor.execute(QUERIES["insert_artifact"].sql, row)


def store_blob(conn: psycopg.Connection, model_id: int, blob: BlobWrite, artifact_format: str) -> None:
    """A model file stored and linked to its model in one transaction (the benchmark's and tests' way to
    give a model a file without training it)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
            _link_blob(cursor, model_id, blob, artifact_format)
    except psycopg.Error as error:
        raise translate(error) from None


def relink_blob(conn: psycopg.Connection, model_id: int, blob: BlobWrite) -> bool:
    """A rebuilt file stored and linked back to its evicted model, in one transaction; False (nothing
    stored) when its SHA-256 is not the model's recorded one."""
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
            _write_blob(cursor, blob)
            cursor.execute(QUERIES["relink_artifact"].sql, {"model_id": model_id, "sha256": blob.sha256})
            if cursor.fetchone() is None:
                raise _Undo
        return True
    except _Undo:
        return False
    except psycopg.Error as error:
        raise translate(error) from None


class _Undo(Exception):
    """Rolls a transaction back from inside its block."""


def _series(result: Any) -> Mapping[str, list[Any]] | None:
    """A result's out-of-sample predictions as arrays: a walk-forward's stitched series, or the held-out
    window's rows (both stored compactly, _series_writes: where a model_predictions row per bar took
    about 94 bytes with its index)."""
    if result.series or not result.predictions:
        return result.series
    return {key: [row[key] for row in result.predictions] for key in ("ts", "predicted", "actual")}


def _series_writes(
    model_id: int, series: Mapping[str, list[Any]] | None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Out-of-sample predictions as they are stored: the predicted values (float4, about 7 significant
    digits) in the model's model_prediction_series row, and their bars (offsets from the first in whole
    seconds) and actual values in prediction_axes, keyed by their SHA-256: stored once for all the models
    predicting the same bars of the same label."""
    if not series:
        return []
    first = series["ts"][0]
    seconds = [int((ts - first).total_seconds()) for ts in series["ts"]]
    actual = [float(value) for value in series["actual"]]
    axes = hashlib.sha256(json.dumps([first.isoformat(), seconds, actual]).encode()).hexdigest()
    return [
        ("insert_prediction_axes", [{"axes": axes, "first_ts": first, "seconds": seconds, "actual": actual}]),
        (
            "insert_prediction_series",
            [{"model_id": model_id, "first_ts": first, "predicted": series["predicted"], "axes": axes}],
        ),
    ]


def _completion(model_id: int, attempt: int, result: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "attempt": attempt,
        "metrics": Jsonb(result.metrics),
        "fold_metrics": Jsonb(result.fold_metrics),
        "timings": Jsonb(result.timings),
    }


def write_result(
    conn: psycopg.Connection,
    model_id: int,
    attempt: int,
    result: Any,
    artifact_format: str,
    location: str | None = None,
) -> bool:
    """A training's results in one transaction (metrics, importances, predictions, file, its default
    backtest deferred), only while this attempt holds the model (fencing): False when it does not.
    `result` has metrics, fold_metrics, timings, importances, predictions, artifact, artifact_sha256; the
    file goes to blob_chunks, or was put in the outside store at `location` (artifact_store.put). The
    worker daemon's (on its data connection) and the benchmark's baselines' (they write what a worker
    writes)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
            cursor.execute(QUERIES["complete_model"].sql, _completion(model_id, attempt, result))
            if cursor.fetchone() is None:
                return False
            for query, rows in _result_writes(model_id, result):
                cursor.executemany(QUERIES[query].sql, rows)
            _link_blob(cursor, model_id, _blob_of(result, location), artifact_format)
        return True
    except psycopg.Error as error:
        raise translate(error) from None


def forecast_inputs(forecast_id: int) -> Call[Row | None]:
    return Call("forecast_inputs", {"forecast_id": forecast_id}, _first)


def complete_forecast(forecast_id: int, answer: Mapping[str, Any]) -> Call[None]:
    return Call("complete_forecast", {"forecast_id": forecast_id, **answer}, _nothing)


def fail_forecast(forecast_id: int, error: str) -> Call[None]:
    return Call("fail_forecast", {"forecast_id": forecast_id, "error": error}, _nothing)


def simulation_inputs(simulation_id: int) -> Call[Row | None]:
    return Call("simulation_inputs", {"simulation_id": simulation_id}, _first)


def simulation_bars(symbol: str, timeframe: str, start: Any, data_end: Any) -> Call[list[tuple]]:
    params = {"symbol": symbol, "timeframe": timeframe, "start": start, "data_end": data_end}
    return Call("simulation_bars", params, tuples=True)


def complete_simulation(
    simulation_id: int, metrics: Any, equity_curve: Any, period_start: Any, period_end: Any
) -> Call[None]:
    params = {
        "simulation_id": simulation_id,
        "metrics": Jsonb(metrics),
        "equity_curve": Jsonb(equity_curve),
        "period_start": period_start,
        "period_end": period_end,
    }
    return Call("complete_simulation", params, _nothing)


def fail_simulation(simulation_id: int, error: str) -> Call[None]:
    return Call("fail_simulation", {"simulation_id": simulation_id, "error": error}, _nothing)


# ---------------------------------------------------------------------------------------------------
# Named strategies: their aliases (sql/schema/strategies.sql) and their models' live records.


def move_alias(
    strategy: str, alias: str, model_id: int, reason: str, actor: str | None, via: str
) -> Call[Row]:
    params = {
        "strategy": strategy,
        "alias": alias,
        "model_id": model_id,
        "reason": reason,
        "actor": actor,
        "via": via,
    }
    return Call("move_alias", params, _one)


def get_strategy(name: str) -> Call[Row | None]:
    return Call("get_strategy", {"name": name}, _first)


def strategy_aliases(name: str) -> Call[list[Row]]:
    return Call("strategy_aliases", {"name": name})


def strategy_alias_records() -> Call[list[Row]]:
    return Call("strategy_alias_records")


def strategy_history(name: str) -> Call[list[Row]]:
    return Call("strategy_history", {"name": name})


def set_retrain_policy(
    strategy: str, alias: str, policy: Any, tolerance: Any, objective: Any, actor: str | None, via: str
) -> Call[Row]:
    params = {
        "strategy": strategy,
        "alias": alias,
        "policy": Jsonb(policy),
        "tolerance": tolerance,
        "objective": objective,
        "actor": actor,
        "via": via,
    }
    return Call("set_retrain_policy", params, _one)


def strategy_retrain_policies(name: str) -> Call[list[Row]]:
    return Call("strategy_retrain_policies", {"name": name})


def strategy_retrains(name: str, limit: int | None = None) -> Call[list[Row]]:
    """A strategy's retrains and their decisions, newest first; all of them when `limit` is None."""
    return Call("strategy_retrains", {"name": name, "limit": limit})


def live_record_inputs(model_id: int) -> Call[Row | None]:
    return Call("live_record_inputs", {"model_id": model_id}, _first)


def model_live_forecasts(model_id: int) -> Call[list[Row]]:
    return Call("model_live_forecasts", {"model_id": model_id})


def save_live_record(model_id: int, record: Mapping[str, Any]) -> Call[None]:
    params = {
        "model_id": model_id,
        "forecasts": record["forecasts"],
        "realised": record["realised"],
        "metrics": Jsonb(record["metrics"]),
        "equity_curve": Jsonb(record["equity_curve"]) if record["equity_curve"] is not None else None,
    }
    return Call("save_live_record", params, _nothing)


# ---------------------------------------------------------------------------------------------------
# Bars in: checked rows upserted with COPY, in one transaction.


def set_calendar(symbol: str, calendar: str) -> Call[None]:
    return Call("set_calendar", {"symbol": symbol, "calendar": calendar}, _nothing)


def upsert_bars(
    conn: psycopg.Connection, symbol: str, timeframe: str, bars: Iterable[Any]
) -> tuple[int, int]:
    """Upsert (symbol, timeframe, bar.ts, bar.open, ...) rows, streamed through COPY as `bars` yields them
    (an exception from `bars` abandons the COPY and the transaction); returns (inserted, updated)."""
    try:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute(QUERIES["create_incoming_bars"].sql)
            with cursor.copy(QUERIES["copy_incoming_bars"].sql) as copy:
                for bar in bars:
                    copy.write_row(
                        (symbol, timeframe, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)
                    )
            cursor.execute(QUERIES["upsert_incoming_bars"].sql)
            inserted, updated = cursor.fetchone()
    except psycopg.Error as error:
        raise translate(error) from None
    return inserted, updated


# ---------------------------------------------------------------------------------------------------
# The DuckDB import (`sfq migrate-duckdb`, sql/legacy.sql): DuckDB reads, then one PostgreSQL transaction.


def _duckdb_rows(duck: Any, query: str, batch: int = 1000) -> Iterator[Row]:
    """A duckdb_* query's rows as dicts (lower-case column names), read in batches."""
    cursor = duck.execute(QUERIES[query].sql)
    names = [column[0].lower() for column in cursor.description]
    while rows := cursor.fetchmany(batch):
        yield from (dict(zip(names, values, strict=True)) for values in rows)


def duckdb_columns(duck: Any) -> Iterator[Row]:
    return _duckdb_rows(duck, "duckdb_columns")


def duckdb_models(duck: Any) -> Iterator[Row]:
    return _duckdb_rows(duck, "duckdb_models")


def duckdb_features_log(duck: Any) -> Iterator[Row]:
    return _duckdb_rows(duck, "duckdb_features_log")


def duckdb_simulation_history(duck: Any) -> Iterator[Row]:
    return _duckdb_rows(duck, "duckdb_simulation_history")


def begin_import() -> Call[None]:
    return Call("begin_import", {}, _nothing)


def create_import_tables() -> Call[None]:
    return Call("create_import_tables", {}, _nothing)


def request_defaults() -> Call[Any]:
    return Call("request_defaults", {}, _value)


def import_model(params: Mapping[str, Any]) -> Call[Row]:
    return Call("import_model", params, _one)


def link_parents(links: Mapping[int, int]) -> Call[None]:
    return Call("link_parents", {"children": list(links), "parents": list(links.values())}, _nothing)


@contextlib.contextmanager
def _copy(conn: psycopg.Connection, query: str) -> Iterator[Any]:
    with conn.cursor() as cursor, cursor.copy(QUERIES[query].sql) as copy:
        yield copy


def copy_features(conn: psycopg.Connection) -> contextlib.AbstractContextManager:
    """COPY legacy feature importances: write (legacy model id, model id, feature, importance, logged at)."""
    return _copy(conn, "copy_features")


def copy_simulations(conn: psycopg.Connection) -> contextlib.AbstractContextManager:
    """COPY legacy backtests: write their rows in copy_simulations' column order."""
    return _copy(conn, "copy_simulations")


def import_features() -> Call[int]:
    return Call("import_features", {}, _value)


def import_simulations(file: str) -> Call[int]:
    return Call("import_simulations", {"file": file}, int, rowcount=True)


# ---------------------------------------------------------------------------------------------------
# The schema's own bookkeeping (queue_app.db applies migrations and sql/schema in one transaction).


def lock_migrations() -> Call[None]:
    return Call("lock_migrations", {}, _nothing)


def create_migrations_table() -> Call[None]:
    return Call("create_migrations_table", {}, _nothing)


def applied_migrations() -> Call[dict[str, str]]:
    return Call("applied_migrations", {}, lambda rows: {row["name"]: row["checksum"] for row in rows})


def has_procrastinate_schema() -> Call[bool]:
    return Call("has_procrastinate_schema", {}, _value)


def has_sfq_tables() -> Call[bool]:
    return Call("has_sfq_tables", {}, _value)


def forget_procrastinate_versions() -> Call[None]:
    return Call("forget_procrastinate_versions", {}, _nothing)


def set_schema_search_path() -> Call[None]:
    return Call("set_schema_search_path", {}, _nothing)


def record_migration(name: str, checksum: str) -> Call[None]:
    return Call("record_migration", {"name": name, "checksum": checksum}, _nothing)


def execute_script(conn: psycopg.Connection, sql: str) -> None:
    """A migration or a schema file: statements run as they are written (no parameters); an error in one
    is a defect of sfq, not of the caller's input, so it is not translated."""
    conn.execute(sql)


async def run_pooled(pool: psycopg_pool.AsyncConnectionPool, call: Call[T]) -> T:
    """One call on a connection of a pool: the API's (its endpoints and the dashboard's pages), a worker
    daemon's queue pool (its heartbeat and rescue)."""
    async with pooled(pool) as conn:
        return await run_async(conn, call)


# ---------------------------------------------------------------------------------------------------
# What the benchmarks (bench/) wait for and measure.


def models_unsettled(model_ids: Sequence[int]) -> Call[int]:
    return Call("models_unsettled", {"model_ids": list(model_ids)}, _value)


def prediction_series_size(model_ids: Sequence[int]) -> Call[Row]:
    return Call("prediction_series_size", {"model_ids": list(model_ids)}, _one)


def model_timings(model_ids: Sequence[int]) -> Call[list[Row]]:
    return Call("model_timings", {"model_ids": list(model_ids)})


def jobs_left(job_ids: Sequence[int]) -> Call[int]:
    return Call("jobs_left", {"job_ids": list(job_ids)}, _value)


def cancel_waiting_jobs(model_ids: Sequence[int]) -> Call[None]:
    return Call("cancel_waiting_jobs", {"model_ids": list(model_ids)}, _nothing)


# ---------------------------------------------------------------------------------------------------
# Whole databases (the demo's, and the tests' and benchmarks' throwaway ones), and SQL a client writes.


def recreate_database(server_url: str, name: str, template: str | None = None) -> str:
    """Drop the database `name` on the server (whoever is connected) and create it empty, or as a copy of
    the database `template`; its URL."""
    with connect(server_url, autocommit=True) as conn:
        identifier = pgsql.Identifier(name)
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        create = pgsql.SQL("CREATE DATABASE {}").format(identifier)
        if template is not None:
            create += pgsql.SQL(" TEMPLATE {}").format(pgsql.Identifier(template))
        conn.execute(create)
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    """Drop the database `name` on the server if it exists, whoever is connected."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


def client_statement(conn: psycopg.Connection, statement: str) -> tuple | None:
    """A statement written as another service would write it (the demo's plain INSERTs), run as given;
    its first row, if it returns one."""
    try:
        return conn.execute(statement).fetchone()
    except psycopg.Error as error:
        raise translate(error) from None


# ---------------------------------------------------------------------------------------------------
# Studies (queue_app.search; advanced by workers/daemon/studies.py).


def create_study(study: Any, via: str) -> Call[Row]:
    return Call("create_study", {"study": _json(study), "via": via}, _one)


def stop_study(study_id: int) -> Call[Row]:
    return Call("stop_study", {"study_id": study_id}, _one)


def get_study(study_id: int) -> Call[Row | None]:
    return Call("get_study", {"study_id": study_id}, _first)


def recent_studies(limit: int) -> Call[list[Row]]:
    return Call("recent_studies", {"limit": limit})


def study_trials(study_id: int) -> Call[list[Row]]:
    return Call("study_trials", {"study_id": study_id})


def lock_study(study_id: int) -> Call[Row | None]:
    return Call("lock_study", {"study_id": study_id}, _first)


def study_journal(study_id: int, first: int) -> Call[list[Any]]:
    return Call(
        "study_journal", {"study_id": study_id, "first": first}, lambda rows: [r["entry"] for r in rows]
    )


def append_study_journal(study_id: int, entries: list[Any]) -> Call[None]:
    return Call("append_study_journal", {"study_id": study_id, "entries": _json(entries)}, _nothing)


def ended_trials(study_id: int) -> Call[list[Row]]:
    return Call("ended_trials", {"study_id": study_id})


def study_budget(study_id: int) -> Call[Row]:
    return Call("study_budget", {"study_id": study_id}, _one)


def live_training_workers() -> Call[int]:
    return Call("live_training_workers", {}, _value)


def insert_trial(study_id: int, number: int, **trial: Any) -> Call[None]:
    params = {
        "study_id": study_id,
        "number": number,
        "model_id": trial.get("model_id"),
        "state": trial["state"],
        "params": Jsonb(trial["params"]),
        "values": trial.get("values"),
        "parent_number": trial.get("parent_number"),
        "mutation": Jsonb(trial["mutation"]) if trial.get("mutation") is not None else None,
        "error": trial.get("error"),
    }
    return Call("insert_trial", params, _nothing)


def settle_trial(
    study_id: int, number: int, state: str, values: list[float] | None, error: str | None
) -> Call[None]:
    params = {"study_id": study_id, "number": number, "state": state, "values": values, "error": error}
    return Call("settle_trial", params, _nothing)


def submit_trial(study_id: int, request: Mapping[str, Any]) -> Call[Submission]:
    return Call("submit_trial", {"study_id": study_id, "request": _json(request)}, _submission)


def trial_model(study_id: int, number: int) -> Call[int | None]:
    return Call(
        "trial_model",
        {"study_id": study_id, "number": number},
        lambda rows: rows[0]["model_id"] if rows else None,
    )


def finish_study(study_id: int, state: str, reason: str) -> Call[None]:
    return Call("finish_study", {"study_id": study_id, "state": state, "reason": reason}, _nothing)


def pruning_trials(model_id: int) -> Call[list[Row]]:
    return Call("pruning_trials", {"model_id": model_id})


def record_fold(study_id: int, number: int, fold: int, value: float) -> Call[None]:
    return Call(
        "record_fold", {"study_id": study_id, "number": number, "fold": fold, "value": value}, _nothing
    )


def model_forecasts_with_bars(model_id: int) -> Call[list[Row]]:
    return Call("model_forecasts_with_bars", {"model_id": model_id})


def live_record_counts(model_id: int) -> Call[Row | None]:
    return Call("live_record_counts", {"model_id": model_id}, _first)
