"""The HTTP API (Starlette), served by `sfq api`. Thin: every request is one named query."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import date, datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from queue_app import spec
from queue_app.config import Settings, database_url
from queue_app.db import QUERIES
from queue_app.enqueue import RequestRejected, submit_async

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
MAX_PAGE = 500
MAX_BODY_BYTES = 1 << 20  # a training request is a few hundred bytes; a larger body is refused with 413


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, separators=(",", ":")).encode()


def error(status: int, message: str, detail: Any = None) -> JSON:
    return JSON({"error": message, "detail": detail}, status_code=status)


def _model_url(request: Request, model_id: int) -> str:
    return str(request.url_for("get_model", model_id=model_id))


async def _limited_body(request: Request) -> bytes | None:
    """The request's body, or None when it is over MAX_BODY_BYTES (as declared or as actually sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count what arrives
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


async def train(request: Request) -> JSON:
    raw = await _limited_body(request)
    if raw is None:
        return error(413, f"request body is larger than {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    # JSONDecodeError is a ValueError; RecursionError is a body nested deeper than Python's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return error(400, "request body is not valid JSON", str(exc))
    if not isinstance(body, dict):
        return error(422, "request body must be a JSON object", {"field": None})
    async with request.app.state.pool.connection() as conn:
        try:
            submission = await submit_async(conn, body, "http")
        except RequestRejected as rejected:
            return error(
                422, rejected.message, {"field": rejected.field, "not_supported": rejected.not_supported}
            )
        except RecursionError:  # parsed, but nested too deeply to be encoded again for the database
            return error(400, "request body is nested too deeply", None)
    return JSON(
        {
            "model_id": submission.model_id,
            "url": _model_url(request, submission.model_id),
            "fingerprint": submission.fingerprint,
            "deduplicated": submission.deduplicated,
        },
        status_code=200 if submission.deduplicated else 201,
    )


async def get_model(request: Request) -> JSON:
    model_id = request.path_params["model_id"]
    async with request.app.state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUERIES["get_model"], {"model_id": model_id})
        model = await cursor.fetchone()
        if model is None:
            return error(404, f"no model with id {model_id}")
        await cursor.execute(QUERIES["model_features"], {"model_id": model_id})
        model["feature_importances"] = await cursor.fetchall()
    model["url"] = _model_url(request, model_id)
    return JSON(model)


class BadQuery(Exception):
    """A query parameter is invalid: answered 422 naming it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise BadQuery(name, f"{name} must be an integer between {low} and {high}, got {raw!r}")
    return int(raw)


def _query_text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and (len(raw) > 200 or not raw.isprintable()):
        raise BadQuery(name, f"{name} must be printable text of at most 200 characters")
    return raw


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def list_models(request: Request) -> JSON:
    params = request.query_params
    status = params.get("status")
    if status is not None and status not in STATUSES:
        return error(422, f"status must be one of {', '.join(STATUSES)}, got {status!r}", {"field": "status"})
    sort = params.get("sort", "id")
    if not re.fullmatch(r"[a-z0-9_]{1,64}", sort):
        return error(422, f"sort must be 'id' or a metric name, got {sort!r}", {"field": "sort"})
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        return error(422, f"order must be asc or desc, got {order!r}", {"field": "order"})
    limit = _query_int(request, "limit", 50, 1, MAX_PAGE)
    offset = _query_int(request, "offset", 0, 0, 10**9)
    query = {
        "status": status,
        "symbol": _query_text(request, "symbol"),
        "algorithm": _query_text(request, "algorithm"),
        "metric": None if sort == "id" else sort,
        "direction": 1 if order == "asc" else -1,
        "limit": limit,
        "offset": offset,
    }
    async with request.app.state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUERIES["list_models"], query)
        rows = await cursor.fetchall()
        await cursor.execute(QUERIES["count_models"], query)
        total = (await cursor.fetchone())["total"]
    for row in rows:
        row["url"] = _model_url(request, row["id"])
    return JSON({"models": rows, "total": total, "limit": limit, "offset": offset})


async def healthz(request: Request) -> JSON:
    async with request.app.state.pool.connection(timeout=2) as conn:
        await conn.execute("SELECT 1")
    return JSON({"status": "ok", "database": "ok"})


async def openapi(request: Request) -> JSON:
    return JSON(OPENAPI)


def _error_schema() -> dict:
    return {"type": "object", "properties": {"error": {"type": "string"}, "detail": {}}}


def _response(description: str, schema: dict | None = None) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _error_schema()}},
    }


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "sfq: strategy-factory training queue", "version": "1"},
    "paths": {
        "/train": {
            "post": {
                "summary": "Submit a training request (deduplicated by fingerprint)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": spec.request_schema()}},
                },
                "responses": {
                    "201": _response("Model created and queued", {"type": "object"}),
                    "200": _response(
                        "An existing model serves this request (deduplicated)", {"type": "object"}
                    ),
                    "400": _response("Body is not JSON"),
                    "413": _response("Body larger than 1 MiB"),
                    "422": _response("Invalid request; detail.field names the field"),
                    "503": _response("Database unreachable"),
                },
            }
        },
        "/models": {
            "get": {
                "summary": "List models: filter by status, symbol, algorithm; sort by id or a metric",
                "parameters": [
                    {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                    for name, kind in (
                        ("status", "string"),
                        ("symbol", "string"),
                        ("algorithm", "string"),
                        ("sort", "string"),
                        ("order", "string"),
                        ("limit", "integer"),
                        ("offset", "integer"),
                    )
                ],
                "responses": {
                    "200": _response("A page of models", {"type": "object"}),
                    "422": _response("Bad query parameter"),
                },
            }
        },
        "/models/{model_id}": {
            "get": {
                "summary": "A model: status, spec, metrics, timings, error, feature importances",
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": _response("The model", {"type": "object"}),
                    "404": _response("Unknown id"),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness, including the database",
                "responses": {
                    "200": _response("Healthy", {"type": "object"}),
                    "503": _response("Database unreachable"),
                },
            }
        },
    },
}


async def _http_error(request: Request, exc: HTTPException) -> JSON:
    return error(exc.status_code, exc.detail)


async def _bad_query(request: Request, exc: BadQuery) -> JSON:
    return error(422, str(exc), {"field": exc.field})


async def _no_schema(request: Request, exc: psycopg.Error) -> JSON:
    return error(503, "database has no sfq schema; run `sfq db upgrade`", exc.diag.message_primary)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    return error(500, "internal error", type(exc).__name__)


async def _database_unavailable(request: Request, exc: Exception) -> JSON:
    return error(503, "database unavailable", str(exc) or type(exc).__name__)


def create_app(url: str | None = None, settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    url = url or database_url(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=settings.pool_size,
            open=False,
            timeout=5,
            kwargs={"autocommit": True, "application_name": "sfq-api"},
        )
        await pool.open(wait=False)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/train", train, methods=["POST"]),
            Route("/models", list_models, methods=["GET"]),
            Route("/models/{model_id:int}", get_model, methods=["GET"], name="get_model"),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: _http_error,
            BadQuery: _bad_query,
            psycopg.errors.UndefinedTable: _no_schema,
            psycopg.errors.UndefinedFunction: _no_schema,
            Exception: _unexpected,
            psycopg.OperationalError: _database_unavailable,
            psycopg_pool.PoolTimeout: _database_unavailable,
        },
        lifespan=lifespan,
    )
