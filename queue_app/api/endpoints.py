"""The API's endpoints. Thin: each reads its request, runs the gateway's calls and shapes the answer;
every refusal is an sfq error that the handler table (queue_app.api.app) answers.

Paths are the old training service's, so its clients keep working: POST /train, /train/batch,
/retrain/{id}, /api/train_with_parent, and the /models/{id}/... family.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

from queue_app import artifact_store, gateway, lineage, monitor, params, studies, sweeps, tracing
from queue_app.api import auth, http
from queue_app.api.http import JSON
from queue_app.api.openapi import OPENAPI
from queue_app.errors import Conflict, NotFound, Rejected
from queue_app.gateway import Call, Submission
from queue_app.vocabulary import TRAINING_QUEUE

T = TypeVar("T")

FORECAST_WAIT_S = 30  # how long POST /models/{id}/predict waits for a worker before answering 202
SIMULATION_WAIT_S = 10
ANSWER_POLL_S = 0.05
# The decay flag of a strategy alias, as GET /strategies/{name} shows it (workers/modelling/live.py).
DECAY_FIELDS = ("live_sharpe", "backtest_sharpe", "standard_error", "n", "min_n", "decayed", "reason")
RECENT_RETRAINS = 10  # GET /strategies/{name} shows the latest retrains; /history shows them all
ANSWERED = {"completed": 200, "failed": 422, "queued": 202}  # a forecast's or a backtest's state


async def call(request: Request, one: Call[T]) -> T:
    async with gateway.pooled(request.app.state.pool) as conn:
        return await gateway.run_async(conn, one)


def _url(request: Request, route: str, /, **path: int | str) -> str:
    """A route's absolute URL, as Starlette's url_for makes it for an http route, for a fraction of its
    cost (43 against 5 us; a leaderboard page makes one a model): the route found once by name, not by
    trying each in turn, and its path joined to the request's base URL as text, not parsed into URLs."""
    return str(request.base_url).rstrip("/") + _route(request, route).url_path_for(route, **path)


def _route(request: Request, name: str) -> BaseRoute:
    """The API's route of that name. Found once: every app has the same routes (queue_app.api.app.ROUTES)."""
    if name not in _ROUTES:
        _ROUTES[name] = next(r for r in request.scope["router"].routes if getattr(r, "name", None) == name)
    return _ROUTES[name]


_ROUTES: dict[str, BaseRoute] = {}


def _model_url(request: Request, model_id: int) -> str:
    return _url(request, "get_model", model_id=model_id)


def _submission(request: Request, submission: Submission) -> dict[str, Any]:
    return {
        "model_id": submission.model_id,
        "url": _model_url(request, submission.model_id),
        "fingerprint": submission.fingerprint,
        "deduplicated": submission.deduplicated,
    }


def _created(request: Request, submission: Submission) -> JSON:
    """201 when a model was created, 200 when an existing model serves the request."""
    return JSON(_submission(request, submission), status_code=200 if submission.deduplicated else 201)


async def _send(
    request: Request, body: dict[str, Any], submit: Callable[[Mapping[str, Any]], Awaitable[T]]
) -> T:
    """A submission, in its producer span when tracing is on (a child of the request's `traceparent`
    header, W3C Trace Context), whose context is stored with the request (queue_app.tracing)."""
    with tracing.sending(TRAINING_QUEUE, body, request.headers) as sending:
        answer = await submit(sending.request)
        if sending.recording:
            sending.sent(answer, await call(request, gateway.model_jobs(sending.new_models(answer))))
    return answer


async def train(request: Request) -> JSON:
    body = await http.json_body(request)
    return _created(request, await _send(request, body, request.app.state.gathering.submit))


async def train_batch(request: Request) -> JSON:
    """One spec, four models (open, close, high, low), enqueued in one transaction."""
    body = await http.json_body(request)
    submissions = await _send(request, body, lambda spec: call(request, gateway.submit_batch(spec, "http")))
    return JSON(
        {
            "model_ids": [s.model_id for s in submissions],
            "models": [{"target_col": s.target_col, **_submission(request, s)} for s in submissions],
        },
        status_code=201 if any(not s.deduplicated for s in submissions) else 200,
    )


async def retrain(request: Request) -> JSON:
    body = await http.json_body(request, required=False)
    http.only(body, "force")
    retrained = gateway.retrain(request.path_params["model_id"], http.boolean(body, "force"), "http")
    return _created(request, await call(request, retrained))


async def train_with_parent(request: Request) -> JSON:
    body = await http.json_body(request)
    http.only(body, "parent_model_id", "overrides")
    parent = http.model_id(body, "parent_model_id")
    return _created(request, await call(request, gateway.evolve(parent, body.get("overrides", {}), "http")))


async def cancel(request: Request) -> JSON:
    row = await call(request, gateway.cancel_model(request.path_params["model_id"]))
    return JSON({**row, "url": _model_url(request, row["id"])})


async def _model_status(request: Request) -> tuple[int, str]:
    model_id = request.path_params["model_id"]
    status = await call(request, gateway.model_status(model_id))
    if status is None:
        raise NotFound(f"no model with id {model_id}")
    return model_id, status


async def get_model(request: Request) -> JSON:
    model_id = request.path_params["model_id"]
    model = await call(request, gateway.get_model(model_id))
    if model is None:
        raise NotFound(f"no model with id {model_id}")
    model["feature_importances"] = await call(request, gateway.model_features(model_id))
    model["url"] = _model_url(request, model_id)
    return JSON(model)


async def model_features(request: Request) -> JSON:
    """Feature importances, ranked (1 = most important)."""
    model_id, status = await _model_status(request)
    features = await call(request, gateway.model_features(model_id))
    return JSON({"model_id": model_id, "status": status, "features": features})


async def model_predictions(request: Request) -> JSON:
    """The held-out test window: each bar's prediction next to the actual value."""
    model_id, status = await _model_status(request)
    predictions = await call(request, gateway.model_predictions(model_id))
    return JSON({"model_id": model_id, "status": status, "predictions": predictions})


async def model_artifact(request: Request) -> Response:
    """The model file (skops), streamed a chunk at a time, with its recorded SHA-256 in X-Content-SHA256
    (and as the ETag): the client checks it. An evicted file is a 409 (a forecast rebuilds it)."""
    model_id, status = await _model_status(request)
    artifact = await call(request, gateway.model_artifact(model_id))
    if artifact is None:
        raise Conflict(f"model {model_id} is {status}: it has no model file (only a completed model has one)")
    return StreamingResponse(
        _artifact_chunks(request, artifact_store.present(artifact)),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(artifact["size"]),
            "X-Content-SHA256": artifact["sha256"],
            "ETag": f'"{artifact["sha256"]}"',
            "Content-Disposition": f'attachment; filename="model-{model_id}.{artifact["format"]}"',
        },
    )


async def _artifact_chunks(request: Request, artifact: dict[str, Any]) -> AsyncIterator[bytes]:
    """The file's chunks, each read on a pooled connection (none is held while the client reads)."""
    if artifact["location"] is not None:  # an outside store: its reads block, in a thread
        pieces = artifact_store.chunks(None, artifact)
        while piece := await run_in_threadpool(next, pieces, b""):
            yield piece
        return
    for n in range(artifact["chunks"]):
        piece = await call(request, gateway.blob_chunk(artifact["blob"], n))
        if piece is None:  # collected meanwhile: the client sees a short body, and the hash tells it
            return
        yield piece


async def model_lineage(request: Request) -> JSON:
    model_id = request.path_params["model_id"]
    rows = await call(request, gateway.lineage(model_id))
    if not rows:
        raise NotFound(f"no model with id {model_id}")
    chain = lineage.build(model_id, rows)
    for model in chain["models"]:
        model["url"] = _model_url(request, model["id"])
    return JSON(chain)


async def list_models(request: Request) -> JSON:
    """Filter, paginate (by offset, or after the row a page's `next` names), and sort by id or by a stored
    metric (a leaderboard). The total is the counters' (no scan); an offset past it is refused."""
    query = params.ModelQuery.parse(request.query_params)
    counted = await call(request, gateway.count_models(query))
    total = counted.total
    query.within(total)
    rows, after = query.page(await call(request, gateway.list_models(query, counted)))
    for row in rows:
        row["url"] = _model_url(request, row["id"])
    page = {"models": rows, "total": total, "limit": query.limit, "offset": query.offset, "next": after}
    return JSON(page)


async def _until_answered(
    request: Request, poll: Call[dict[str, Any] | None], wait_s: float
) -> dict[str, Any]:
    """Poll a forecast or a backtest until a worker has answered, or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        row = await call(request, poll)
        if row["status"] != "queued" or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(ANSWER_POLL_S)


def _answer(request: Request, row: dict[str, Any], route: str, key: str) -> dict[str, Any]:
    """A forecast or a backtest with its own URL (route `route`, path key `key`) and its model's."""
    return {
        **row,
        "url": _url(request, route, **{key: row["id"]}),
        "model_url": _model_url(request, row["model_id"]),
    }


def _forecast_body(request: Request, forecast: dict[str, Any]) -> dict[str, Any]:
    return _answer(request, forecast, "get_forecast", "forecast_id")


async def predict(request: Request) -> JSON:
    """Ask a worker to load the stored model and predict from the latest bar; wait up to `wait` seconds
    (default 30), then answer 200 with the forecast, or 202 with its URL to poll."""
    wait_s = params.integer(request.query_params, "wait", FORECAST_WAIT_S, 0, 300)
    queued = await call(request, gateway.request_forecast(request.path_params["model_id"]))
    forecast = await _until_answered(request, gateway.get_forecast(queued["id"]), wait_s)
    return JSON(_forecast_body(request, forecast), status_code=ANSWERED[forecast["status"]])


async def get_forecast(request: Request) -> JSON:
    forecast_id = request.path_params["forecast_id"]
    forecast = await call(request, gateway.get_forecast(forecast_id))
    if forecast is None:
        raise NotFound(f"no forecast with id {forecast_id}")
    return JSON(_forecast_body(request, forecast))


def _simulation_body(request: Request, simulation: dict[str, Any]) -> dict[str, Any]:
    return _answer(request, simulation, "get_simulation", "simulation_id")


async def simulate(request: Request) -> JSON:
    """A backtest of a completed model: `{"model_id", "strategy", "params"}`; waits like predict."""
    body = await http.json_body(request)
    http.only(body, "model_id", "strategy", "params", "priority")
    model_id = http.model_id(body, "model_id")
    strategy = http.text(body.get("strategy", "long_short"), "strategy", "a strategy's name")
    simulation_params = http.holdable(body.get("params", {}), "params")
    asked = gateway.request_simulation(model_id, strategy, simulation_params, http.priority(body, 0))
    wait_s = params.integer(request.query_params, "wait", SIMULATION_WAIT_S, 0, 300)
    queued = await call(request, asked)
    simulation = await _until_answered(request, gateway.get_simulation(queued["id"]), wait_s)
    return JSON(_simulation_body(request, simulation), status_code=ANSWERED[simulation["status"]])


async def lockbox(request: Request) -> JSON:
    """The model's one evaluation on its lockbox (computed once by a worker; every request is counted
    as a look, `lockbox_looks`, shown with it); waits like predict."""
    wait_s = params.integer(request.query_params, "wait", SIMULATION_WAIT_S, 0, 300)
    queued = await call(request, gateway.request_lockbox(request.path_params["model_id"]))
    simulation = await _until_answered(request, gateway.get_simulation(queued["id"]), wait_s)
    return JSON(_simulation_body(request, simulation), status_code=ANSWERED[simulation["status"]])


async def get_simulation(request: Request) -> JSON:
    simulation_id = request.path_params["simulation_id"]
    simulation = await call(request, gateway.get_simulation(simulation_id))
    if simulation is None:
        raise NotFound(f"no simulation with id {simulation_id}")
    return JSON(_simulation_body(request, simulation))


async def model_simulations(request: Request) -> JSON:
    model_id, status = await _model_status(request)
    rows = await call(request, gateway.model_simulations(model_id))
    return JSON(
        {"model_id": model_id, "status": status, "simulations": [_simulation_body(request, r) for r in rows]}
    )


def _path_name(request: Request, key: str) -> str:
    """A strategy's or an alias's name from the path, as text the database can take (it checks the rest)."""
    return http.text(request.path_params[key], key, "a name")


async def move_alias(request: Request) -> JSON:
    """`{"model_id", "reason"}`: point the strategy's alias at a completed model, recorded with the token's
    name (who), the time and the reason, together or not at all (sfq_move_alias)."""
    body = await http.json_body(request)
    http.only(body, "model_id", "reason")
    model_id = http.model_id(body, "model_id")
    reason = http.text(body.get("reason"), "reason", "a string saying why the alias moves")
    name, alias = _path_name(request, "name"), _path_name(request, "alias")
    moved = await call(
        request, gateway.move_alias(name, alias, model_id, reason, auth.actor(request), "http")
    )
    return JSON(
        {
            **moved,
            "url": _url(request, "get_strategy", name=moved["strategy"]),
            "model_url": _model_url(request, moved["model_id"]),
        }
    )


async def set_retrain_policy(request: Request) -> JSON:
    """`{"policy": {"kind": ...}, "tolerance": 0.01, "objective": "cv_ic"}`: how the strategy's alias is
    retrained, and how a retrained model is judged against it (sql/schema/retrains.sql checks the rest)."""
    body = await http.json_body(request)
    http.only(body, "policy", "tolerance", "objective")
    tolerance, objective = body.get("tolerance"), body.get("objective")
    if tolerance is not None:
        if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or abs(tolerance) > 1e300:
            raise Rejected(
                f"tolerance must be a number in the objective's units, got {tolerance!r}", "tolerance"
            )
        tolerance = float(tolerance)
    if objective is not None:
        objective = http.text(objective, "objective", "the name of a metric such as cv_ic")
    name, alias = _path_name(request, "name"), _path_name(request, "alias")
    policy = await call(
        request,
        gateway.set_retrain_policy(
            name, alias, body.get("policy"), tolerance, objective, auth.actor(request), "http"
        ),
    )
    return JSON({**policy, "url": _url(request, "get_strategy", name=name)})


async def _strategy(request: Request) -> str:
    name = _path_name(request, "name")
    if await call(request, gateway.get_strategy(name)) is None:
        raise NotFound(f"no strategy named {name!r}")
    return name


async def get_strategy(request: Request) -> JSON:
    """Each alias with its model, its latest forecast, its live record and, beside it, the same model's
    held-out metrics and default backtest (the convention its live forecasts are paper-traded by), and the
    decay flag the workers stored with the live record (workers/modelling/live.py `decay`; all null
    before the first live record)."""
    name = _path_name(request, "name")
    strategy = await call(request, gateway.get_strategy(name))
    if strategy is None:
        raise NotFound(f"no strategy named {name!r}")
    aliases = []
    for row in await call(request, gateway.strategy_aliases(name)):
        backtest = await call(request, gateway.default_backtest(row["model_id"]))
        live = dict(row["live"] or {})
        decay = live.pop("decay", None) or {}
        aliases.append(
            {
                "alias": row["alias"],
                "model_id": row["model_id"],
                "model_url": _model_url(request, row["model_id"]),
                "moved_at": row["moved_at"],
                "model": {
                    k: row[k]
                    for k in ("symbol", "timeframe", "algorithm", "target_col", "target_transform", "horizon")
                }
                | {"status": row["model_status"]},
                "latest_forecast": None
                if row["latest_forecast_id"] is None
                else {
                    "id": row["latest_forecast_id"],
                    "url": _url(request, "get_forecast", forecast_id=row["latest_forecast_id"]),
                    "as_of": row["latest_as_of"],
                    "status": row["latest_status"],
                    "prediction": row["latest_prediction"],
                    "predicted_price": row["latest_predicted_price"],
                },
                "live": {
                    "forecasts": row["forecasts"] or 0,
                    "realised": row["realised"] or 0,
                    **live,
                    "paper_trading": live.get("paper_trading"),
                    "equity_curve": row["live_equity_curve"],
                    "updated_at": row["live_updated_at"],
                },
                "decay": {key: decay.get(key) for key in DECAY_FIELDS},
                "backtest": {
                    "held_out": row["held_out"],
                    "paper_trading": backtest["metrics"] if backtest else None,
                    "url": _url(request, "get_simulation", simulation_id=backtest["id"])
                    if backtest
                    else None,
                },
            }
        )
    return JSON(
        {
            **strategy,
            "aliases": aliases,
            "retrain_policies": await call(request, gateway.strategy_retrain_policies(name)),
            "retrains": await call(request, gateway.strategy_retrains(name, RECENT_RETRAINS)),
            "history_url": _url(request, "strategy_history", name=name),
        }
    )


async def strategy_history(request: Request) -> JSON:
    """Every alias move, and every retrain with its champion/challenger decision, newest first."""
    name = await _strategy(request)
    return JSON(
        {
            "strategy": name,
            "history": await call(request, gateway.strategy_history(name)),
            "retrains": await call(request, gateway.strategy_retrains(name)),
        }
    )


async def submit_sweep(request: Request) -> JSON:
    """`{"base": {spec}, "grid": {"field": [values], "hyperparameters.name": [values]}, "priority": -10}`:
    one model per combination, all enqueued in one transaction."""
    body = await http.json_body(request)
    http.only(body, "base", "grid", "priority")
    priority = http.priority(body, sweeps.DEFAULT_PRIORITY)
    sweep = await call(
        request, gateway.submit_sweep(body.get("base", {}), body.get("grid"), priority, "http")
    )
    return JSON(_sweep_summary(request, sweep), status_code=201)


def _sweep_summary(request: Request, sweep: dict[str, Any]) -> dict[str, Any]:
    return {
        "sweep_id": sweep["id"],
        "url": _url(request, "get_sweep", sweep_id=sweep["id"]),
        "combinations": sweep["combinations"],
        "created": sweep["created"],
        "reused": sweep["combinations"] - sweep["created"],
        "priority": sweep["priority"],
        "enqueue_ms": round(sweep["elapsed_ms"], 1),
    }


async def get_sweep(request: Request) -> JSON:
    """Progress and a leaderboard by any metric (`sort=ic`, `sort=backtest.sharpe`), with the PSR of
    each row, the deflated Sharpe ratio of the best by Sharpe and the PBO of choosing it."""
    sweep_id = request.path_params["sweep_id"]
    sweep = await call(request, gateway.get_sweep(sweep_id))
    if sweep is None:
        raise NotFound(f"no sweep with id {sweep_id}")
    query = params.SweepQuery.parse(request.query_params)
    progress = await call(request, gateway.sweep_progress(sweep_id))
    members = await call(request, gateway.sweep_models(sweep_id))
    board = sweeps.leaderboard(members, query, await call(request, gateway.sweep_equity_curves(sweep_id)))
    for row in board["rows"]:
        row["url"] = _model_url(request, row["model_id"])
    summary = _sweep_summary(request, sweep)
    return JSON({**summary, "base": sweep["base"], "grid": sweep["grid"], "progress": progress, **board})


async def create_study(request: Request) -> JSON:
    """A search over spec fields with Optuna's samplers and pruners (queue_app.search), each trial an sfq
    model; the workers advance it. The study object is checked by the database (sfq_create_study)."""
    body = await http.json_body(request)
    study = await call(request, gateway.create_study(body, "http"))
    return JSON(_study_summary(request, study), status_code=201)


def _study_summary(request: Request, study: dict[str, Any]) -> dict[str, Any]:
    return {
        "study_id": study["id"],
        "url": _url(request, "get_study", study_id=study["id"]),
        "state": study["state"],
        "reason": study["reason"],
        "sampler": study["sampler"],
        "pruner": study["pruner"],
        "objectives": study["objectives"],
        "directions": study["directions"],
        "n_trials": study["n_trials"],
        "cpu_seconds": study["cpu_seconds"],
        "max_parallel": study["max_parallel"],
        "priority": study["priority"],
    }


async def get_study(request: Request) -> JSON:
    """Progress, the best trial (the Pareto front for several objectives), every trial with its state, the
    best value so far, the DSR of the best model by Sharpe with N = every trial, and parameter importances
    (`importances=false` to skip them: fANOVA costs a fraction of a second on a few hundred trials)."""
    study_id = request.path_params["study_id"]
    study = await call(request, gateway.get_study(study_id))
    if study is None:
        raise NotFound(f"no study with id {study_id}")
    with_importances = params.flag(request.query_params, "importances", default=True)
    trials = await call(request, gateway.study_trials(study_id))
    board = await run_in_threadpool(studies.report, study, trials, with_importances)
    return JSON({**board, "url": _url(request, "get_study", study_id=study_id)})


async def stop_study(request: Request) -> JSON:
    """No more trials are asked; those running finish and are recorded."""
    study = await call(request, gateway.stop_study(request.path_params["study_id"]))
    return JSON(_study_summary(request, study))


async def metrics(request: Request) -> Response:
    """Prometheus' text format: jobs by queue and status, workers and their heartbeats, throughput,
    training durations by algorithm, this API's database pool, and each strategy alias's live decay flag
    with its live and backtest Sharpe ratios (stored with the live records: no scan of forecasts)."""
    rows = {name: await call(request, one) for name, one in monitor.metric_calls().items()}
    text = monitor.prometheus_text(rows, request.app.state.pool.get_stats(), request.app.state.rescue_after_s)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def healthz(request: Request) -> JSON:
    async with gateway.pooled(request.app.state.pool, timeout=2) as conn:
        await gateway.run_async(conn, gateway.ping())
    return JSON({"status": "ok", "database": "ok"})


async def openapi(request: Request) -> JSON:
    return JSON(OPENAPI)
