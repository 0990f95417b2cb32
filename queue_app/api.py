"""The HTTP API (Starlette), served by `sfq api`. Thin: every request is one named query.

Paths are the old training service's, so its clients keep working: POST /train, /train/batch,
/retrain/{id}, /api/train_with_parent, and the /models/{id}/... family.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from datetime import date, datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from queue_app import lineage, monitor, sweeps, ui
from queue_app.auth import middleware as token_middleware
from queue_app.config import Settings, database_url
from queue_app.db import QUERIES
from queue_app.enqueue import Conflict, NotFound, RequestRejected, request_params, run_async
from queue_app.openapi import OPENAPI

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
MAX_PAGE = 500
MAX_BODY_BYTES = 1 << 20  # a training request is a few hundred bytes; a larger body is refused with 413
MAX_HEAD_BYTES = 64 << 10  # request line and headers still unfinished past it: 400, closed (HttpProtocol)
FORECAST_WAIT_S = 30  # how long POST /models/{id}/predict waits for a worker before answering 202
SIMULATION_WAIT_S = 10
ANSWER_POLL_S = 0.05


class IdConvertor(IntegerConvertor):
    """Ids are bigints: a path with more digits names nothing (404) rather than reaching the database."""

    regex = "[0-9]{1,18}"


register_url_convertor("id", IdConvertor())


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on a request's line and headers: httptools buffers them
    without one (h11 stopped at 16 KiB), so a client sending an endless header would grow the API's memory
    until it is killed. The reads after which the headers are still unfinished are counted; past
    MAX_HEAD_BYTES, 400 and the connection closed. A read that also holds the end of the previous request
    counts whole, so the bound is approximate, never below MAX_HEAD_BYTES.
    """

    head_bytes = 0
    in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes, self.in_head = 0, True

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.in_head or self.transport.is_closing():
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            message = f"Request line and headers larger than {MAX_HEAD_BYTES} bytes."
            self.logger.warning(message)
            self.send_400_response(message)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, separators=(",", ":")).encode()


def error(status: int, message: str, detail: Any = None) -> JSON:
    return JSON({"error": message, "detail": detail}, status_code=status)


class BadRequest(Exception):
    """Answered with `status` (400, 413, 422) and a message; `field` names the culprit when there is one."""

    def __init__(self, status: int, message: str, field: str | None = None, detail: Any = None):
        super().__init__(message)
        self.status, self.field, self.detail = status, field, detail


def _model_url(request: Request, model_id: int) -> str:
    return str(request.url_for("get_model", model_id=model_id))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _json_body(request: Request, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object: 413 over MAX_BODY_BYTES (declared or as sent), 400 when not JSON,
    422 when not an object. An optional body may be empty (then it is {})."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(
            413, f"request body is larger than {MAX_BODY_BYTES} bytes", detail={"limit": MAX_BODY_BYTES}
        )
    raw = bytearray()
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count what arrives
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(
                413, f"request body is larger than {MAX_BODY_BYTES} bytes", detail={"limit": MAX_BODY_BYTES}
            )
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    # JSONDecodeError is a ValueError; RecursionError is a body nested deeper than Python's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(400, "request body is not valid JSON", detail=str(exc)) from None
    if not isinstance(body, dict):
        raise BadRequest(422, "request body must be a JSON object")
    return body


def _only(body: dict[str, Any], *fields: str) -> None:
    """A 422 naming the first field of the body that is not one of `fields`."""
    unknown = sorted(body.keys() - set(fields))
    if unknown:
        raise BadRequest(422, f"unknown field {unknown[0]!r}; expected {', '.join(fields)}", unknown[0])


def _model_id(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise BadRequest(422, f"{field} must be a model id, got {value!r}", field)
    return value


async def _call(request: Request, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with request.app.state.pool.connection() as conn:
        try:
            return await run_async(conn, query, params)
        except RecursionError:  # parsed, but nested too deeply to be encoded again for the database
            raise BadRequest(400, "request body is nested too deeply") from None


def _submission(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_id": row["model_id"],
        "url": _model_url(request, row["model_id"]),
        "fingerprint": row["fingerprint"],
        "deduplicated": row["deduplicated"],
    }


def _created(request: Request, rows: list[dict[str, Any]]) -> JSON:
    """201 when a model was created, 200 when an existing model serves the request."""
    (row,) = rows
    return JSON(_submission(request, row), status_code=200 if row["deduplicated"] else 201)


async def train(request: Request) -> JSON:
    body = await _json_body(request)
    return _created(request, await _call(request, "submit", request_params(body, "http")))


async def train_batch(request: Request) -> JSON:
    """One spec, four models (open, close, high, low), enqueued in one transaction."""
    body = await _json_body(request)
    rows = await _call(request, "submit_batch", request_params(body, "http"))
    models = [{"target_col": row["target_col"], **_submission(request, row)} for row in rows]
    created = any(not row["deduplicated"] for row in rows)
    return JSON(
        {"model_ids": [row["model_id"] for row in rows], "models": models},
        status_code=201 if created else 200,
    )


async def retrain(request: Request) -> JSON:
    body = await _json_body(request, required=False)
    _only(body, "force")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest(422, f"force must be true or false, got {force!r}", "force")
    params = {"model_id": request.path_params["model_id"], "force": force, "via": "http"}
    return _created(request, await _call(request, "retrain", params))


async def train_with_parent(request: Request) -> JSON:
    body = await _json_body(request)
    _only(body, "parent_model_id", "overrides")
    parent = _model_id(body, "parent_model_id")
    params = {"parent_model_id": parent, "overrides": json.dumps(body.get("overrides", {})), "via": "http"}
    return _created(request, await _call(request, "evolve", params))


async def cancel(request: Request) -> JSON:
    (row,) = await _call(request, "cancel_model", {"model_id": request.path_params["model_id"]})
    return JSON({**row, "url": _model_url(request, row["id"])})


async def _fetch(request: Request, query: str, **params: Any) -> list[dict[str, Any]]:
    async with request.app.state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUERIES[query], params)
        return await cursor.fetchall()


async def _model_status(request: Request) -> tuple[int, str]:
    model_id = request.path_params["model_id"]
    rows = await _fetch(request, "model_status", model_id=model_id)
    if not rows:
        raise NotFound(f"no model with id {model_id}")
    return model_id, rows[0]["status"]


async def get_model(request: Request) -> JSON:
    model_id = request.path_params["model_id"]
    rows = await _fetch(request, "get_model", model_id=model_id)
    if not rows:
        raise NotFound(f"no model with id {model_id}")
    model = rows[0]
    model["feature_importances"] = await _fetch(request, "model_features", model_id=model_id)
    model["url"] = _model_url(request, model_id)
    return JSON(model)


async def model_features(request: Request) -> JSON:
    """Feature importances, ranked (1 = most important)."""
    model_id, status = await _model_status(request)
    features = await _fetch(request, "model_features", model_id=model_id)
    return JSON({"model_id": model_id, "status": status, "features": features})


async def model_predictions(request: Request) -> JSON:
    """The held-out test window: each bar's prediction next to the actual value."""
    model_id, status = await _model_status(request)
    predictions = await _fetch(request, "model_predictions", model_id=model_id)
    return JSON({"model_id": model_id, "status": status, "predictions": predictions})


async def model_artifact(request: Request) -> Response:
    """The model file (skops), with its SHA-256 in X-Content-SHA256 (and as the ETag)."""
    model_id, status = await _model_status(request)
    rows = await _fetch(request, "model_artifact", model_id=model_id)
    if not rows:
        raise Conflict(f"model {model_id} is {status}: it has no model file (only a completed model has one)")
    artifact = rows[0]
    return Response(
        bytes(artifact["bytes"]),
        media_type="application/octet-stream",
        headers={
            "X-Content-SHA256": artifact["sha256"],
            "ETag": f'"{artifact["sha256"]}"',
            "Content-Disposition": f'attachment; filename="model-{model_id}.{artifact["format"]}"',
        },
    )


async def model_lineage(request: Request) -> JSON:
    model_id = request.path_params["model_id"]
    rows = await _fetch(request, "lineage", model_id=model_id)
    if not rows:
        raise NotFound(f"no model with id {model_id}")
    chain = lineage.build(model_id, rows)
    for model in chain["models"]:
        model["url"] = _model_url(request, model["id"])
    return JSON(chain)


def _forecast_body(request: Request, forecast: dict[str, Any]) -> dict[str, Any]:
    return {
        **forecast,
        "url": str(request.url_for("get_forecast", forecast_id=forecast["id"])),
        "model_url": _model_url(request, forecast["model_id"]),
    }


async def _until_answered(request: Request, query: str, wait_s: float, **key: Any) -> dict[str, Any]:
    """Poll a forecast or a simulation until a worker has answered, or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        (row,) = await _fetch(request, query, **key)
        if row["status"] != "queued" or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(ANSWER_POLL_S)


ANSWERED = {"completed": 200, "failed": 422, "queued": 202}


async def predict(request: Request) -> JSON:
    """Ask a worker to load the stored model and predict from the latest bar; wait up to `wait` seconds
    (default 30), then answer 200 with the forecast, or 202 with its URL to poll."""
    wait_s = _query_int(request, "wait", FORECAST_WAIT_S, 0, 300)
    (queued,) = await _call(request, "request_forecast", {"model_id": request.path_params["model_id"]})
    forecast = await _until_answered(request, "get_forecast", wait_s, forecast_id=queued["id"])
    return JSON(_forecast_body(request, forecast), status_code=ANSWERED[forecast["status"]])


async def get_forecast(request: Request) -> JSON:
    forecast_id = request.path_params["forecast_id"]
    rows = await _fetch(request, "get_forecast", forecast_id=forecast_id)
    if not rows:
        raise NotFound(f"no forecast with id {forecast_id}")
    return JSON(_forecast_body(request, rows[0]))


def _priority(body: dict[str, Any], default: int) -> int:
    priority = body.get("priority", default)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -100 <= priority <= 100:
        raise BadRequest(
            422, f"priority must be an integer between -100 and 100, got {priority!r}", "priority"
        )
    return priority


def _simulation_body(request: Request, simulation: dict[str, Any]) -> dict[str, Any]:
    return {
        **simulation,
        "url": str(request.url_for("get_simulation", simulation_id=simulation["id"])),
        "model_url": _model_url(request, simulation["model_id"]),
    }


async def simulate(request: Request) -> JSON:
    """A backtest of a completed model: `{"model_id", "strategy", "params"}`; waits like predict."""
    body = await _json_body(request)
    _only(body, "model_id", "strategy", "params", "priority")
    model_id = _model_id(body, "model_id")
    strategy = body.get("strategy", "long_short")
    if not isinstance(strategy, str):
        raise BadRequest(422, f"strategy must be a string, got {strategy!r}", "strategy")
    priority = _priority(body, 0)
    params = {
        "model_id": model_id,
        "strategy": strategy,
        "params": json.dumps(body.get("params", {})),
        "priority": priority,
    }
    wait_s = _query_int(request, "wait", SIMULATION_WAIT_S, 0, 300)
    (queued,) = await _call(request, "request_simulation", params)
    simulation = await _until_answered(request, "get_simulation", wait_s, simulation_id=queued["id"])
    return JSON(_simulation_body(request, simulation), status_code=ANSWERED[simulation["status"]])


async def get_simulation(request: Request) -> JSON:
    simulation_id = request.path_params["simulation_id"]
    rows = await _fetch(request, "get_simulation", simulation_id=simulation_id)
    if not rows:
        raise NotFound(f"no simulation with id {simulation_id}")
    return JSON(_simulation_body(request, rows[0]))


async def model_simulations(request: Request) -> JSON:
    model_id, status = await _model_status(request)
    rows = await _fetch(request, "model_simulations", model_id=model_id)
    return JSON(
        {"model_id": model_id, "status": status, "simulations": [_simulation_body(request, r) for r in rows]}
    )


async def submit_sweep(request: Request) -> JSON:
    """`{"base": {spec}, "grid": {"field": [values], "hyperparameters.name": [values]}, "priority": -10}`:
    one model per combination, all enqueued in one transaction."""
    body = await _json_body(request)
    _only(body, "base", "grid", "priority")
    priority = _priority(body, sweeps.DEFAULT_PRIORITY)
    params = {
        "base": json.dumps(body.get("base", {})),
        "grid": json.dumps(body.get("grid")),
        "priority": priority,
        "via": "http",
    }
    (sweep,) = await _call(request, "submit_sweep", params)
    return JSON(_sweep_summary(request, sweep), status_code=201)


def _sweep_summary(request: Request, sweep: dict[str, Any]) -> dict[str, Any]:
    return {
        "sweep_id": sweep["id"],
        "url": str(request.url_for("get_sweep", sweep_id=sweep["id"])),
        "combinations": sweep["combinations"],
        "created": sweep["created"],
        "reused": sweep["combinations"] - sweep["created"],
        "priority": sweep["priority"],
        "enqueue_ms": round(sweep["elapsed_ms"], 1),
    }


async def get_sweep(request: Request) -> JSON:
    """Progress and a leaderboard by any metric (`sort=ic`, `sort=backtest.sharpe`), with the PSR of
    each row and the deflated Sharpe ratio of the top one."""
    sweep_id = request.path_params["sweep_id"]
    rows = await _fetch(request, "get_sweep", sweep_id=sweep_id)
    if not rows:
        raise NotFound(f"no sweep with id {sweep_id}")
    sort = request.query_params.get("sort", sweeps.DEFAULT_SORT)
    if not re.fullmatch(r"(backtest\.)?[a-z0-9_]{1,64}", sort):
        raise BadQuery("sort", f"sort must be a metric name or backtest.<metric>, got {sort!r}")
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadQuery("order", f"order must be asc or desc, got {order!r}")
    limit = _query_int(request, "limit", 20, 1, MAX_PAGE)
    progress = {
        row["status"]: row["models"] for row in await _fetch(request, "sweep_progress", sweep_id=sweep_id)
    }
    models = await _fetch(request, "sweep_models", sweep_id=sweep_id)
    board = sweeps.leaderboard(models, sort, order == "desc", limit)
    for row in board["rows"]:
        row["url"] = _model_url(request, row["model_id"])
    return JSON(
        {
            **_sweep_summary(request, rows[0]),
            "base": rows[0]["base"],
            "grid": rows[0]["grid"],
            "progress": progress,
            **board,
        }
    )


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


async def list_models(request: Request) -> JSON:
    """Filter, paginate, and sort by id or by any stored metric (a leaderboard)."""
    params = request.query_params
    status = params.get("status")
    if status is not None and status not in STATUSES:
        raise BadQuery("status", f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    sort = params.get("sort", "id")
    if not re.fullmatch(r"[a-z0-9_]{1,64}", sort):
        raise BadQuery("sort", f"sort must be 'id' or a metric name, got {sort!r}")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadQuery("order", f"order must be asc or desc, got {order!r}")
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
    rows = await _fetch(request, "list_models", **query)
    (total,) = await _fetch(request, "count_models", **query)
    for row in rows:
        row["url"] = _model_url(request, row["id"])
    return JSON({"models": rows, "total": total["total"], "limit": limit, "offset": offset})


async def metrics(request: Request) -> Response:
    """Prometheus' text format: jobs by queue and status, workers and their heartbeats, throughput,
    training durations by algorithm, and this API's database pool."""
    rows = {query: await _fetch(request, query, **params) for query, params in monitor.QUERY_PARAMS.items()}
    text = monitor.prometheus_text(rows, request.app.state.pool.get_stats(), request.app.state.rescue_after_s)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def healthz(request: Request) -> JSON:
    async with request.app.state.pool.connection(timeout=2) as conn:
        await conn.execute("SELECT 1")
    return JSON({"status": "ok", "database": "ok"})


async def openapi(request: Request) -> JSON:
    return JSON(OPENAPI)


async def _http_error(request: Request, exc: HTTPException) -> JSON:
    return error(exc.status_code, exc.detail)


async def _bad_request(request: Request, exc: BadRequest) -> JSON:
    detail = exc.detail if exc.detail is not None else {"field": exc.field}
    return error(exc.status, str(exc), detail)


async def _bad_query(request: Request, exc: BadQuery) -> JSON:
    return error(422, str(exc), {"field": exc.field})


async def _rejected(request: Request, exc: RequestRejected) -> JSON:
    return error(422, exc.message, {"field": exc.field})


async def _not_found(request: Request, exc: NotFound) -> JSON:
    return error(404, str(exc))


async def _conflict(request: Request, exc: Conflict) -> JSON:
    return error(409, str(exc))


async def _no_schema(request: Request, exc: psycopg.Error) -> JSON:
    return error(503, "database has no sfq schema; run `sfq db upgrade`", exc.diag.message_primary)


async def _retry(request: Request, exc: psycopg.Error) -> JSON:
    """A deadlock or serialization failure with a concurrent change: nothing was done; try again."""
    return error(503, "conflicting concurrent change; nothing was done, try again", exc.diag.message_primary)


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
        app.state.rescue_after_s = settings.rescue_after_s
        try:
            yield
        finally:
            await pool.close()

    model = "/models/{model_id:id}"
    return Starlette(
        routes=[
            Route("/train", train, methods=["POST"]),
            Route("/train/batch", train_batch, methods=["POST"]),
            Route("/retrain/{model_id:id}", retrain, methods=["POST"]),
            Route("/api/train_with_parent", train_with_parent, methods=["POST"]),
            Route("/models", list_models, methods=["GET"]),
            Route(model, get_model, methods=["GET"], name="get_model"),
            Route(f"{model}/cancel", cancel, methods=["POST"]),
            Route(f"{model}/lineage", model_lineage, methods=["GET"]),
            Route(f"{model}/features", model_features, methods=["GET"]),
            Route(f"{model}/predictions", model_predictions, methods=["GET"]),
            Route(f"{model}/artifact", model_artifact, methods=["GET"]),
            Route(f"{model}/predict", predict, methods=["POST"]),
            Route("/forecasts/{forecast_id:id}", get_forecast, methods=["GET"], name="get_forecast"),
            Route(f"{model}/simulations", model_simulations, methods=["GET"]),
            Route("/simulate", simulate, methods=["POST"]),
            Route("/simulations/{simulation_id:id}", get_simulation, methods=["GET"], name="get_simulation"),
            Route("/sweeps", submit_sweep, methods=["POST"]),
            Route("/sweeps/{sweep_id:id}", get_sweep, methods=["GET"], name="get_sweep"),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *ui.routes(settings),  # the dashboard (docs/dashboard.md); not part of the OpenAPI schema
        ],
        exception_handlers={
            HTTPException: _http_error,
            BadRequest: _bad_request,
            BadQuery: _bad_query,
            RequestRejected: _rejected,
            NotFound: _not_found,
            Conflict: _conflict,
            psycopg.errors.UndefinedTable: _no_schema,
            psycopg.errors.UndefinedFunction: _no_schema,
            psycopg.errors.DeadlockDetected: _retry,
            psycopg.errors.SerializationFailure: _retry,
            Exception: _unexpected,
            psycopg.OperationalError: _database_unavailable,
            psycopg_pool.PoolTimeout: _database_unavailable,
        },
        lifespan=lifespan,
        middleware=token_middleware(settings),  # API tokens (docs/security.md)
    )
