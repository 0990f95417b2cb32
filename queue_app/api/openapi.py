"""The OpenAPI description of the HTTP API (GET /openapi.json). The request schema comes from
`queue_app.spec`; validation itself is the database's. Every path and method of the route table
(queue_app.api.app.ROUTES) has its entry here and nothing else does (tests/test_api_server.py)."""

from __future__ import annotations

from typing import Any

from queue_app import search, spec

OBJECT = {"type": "object"}


# `?wait=` of the operations a worker answers (predict, simulate, lockbox).
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": 300},
}


DIMENSION = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["int", "float", "categorical", "subset"]},
        "low": {"type": "number"},
        "high": {"type": "number"},
        "step": {"type": "number"},
        "log": {"type": "boolean"},
        "choices": {"type": "array"},
        "of": {"type": "array", "items": {"type": "string"}},
        "min_size": {"type": "integer"},
        "when": {"type": "object", "description": "searched only when these fields have these values"},
    },
}
STUDY = {
    "type": "object",
    "required": ["space", "objective"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "base": {"type": "object", "description": "the request every trial starts from"},
        "space": {
            "type": "object",
            "description": 'field (or "hyperparameters.<name>") -> dimension',
            "additionalProperties": DIMENSION,
        },
        "objective": {
            "description": f"one of {', '.join(search.OBJECTIVES)}, or several (a Pareto front)",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "direction": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "sampler": {"enum": list(search.SAMPLERS)},
        "pruner": {"enum": list(search.PRUNERS)},
        "n_trials": {"type": "integer", "minimum": 1, "maximum": 100000},
        "cpu_seconds": {"type": "number", "exclusiveMinimum": 0},
        "max_parallel": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100},
        "seed": {"type": "integer", "minimum": 0},
    },
}
# A strategy's name: a-z, 0-9, _ or - (the database checks it: sql/schema/strategies.sql).
NAME_SCHEMA = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}
NAME = {"name": "name", "in": "path", "required": True, "schema": NAME_SCHEMA}
ALIAS = {"name": "alias", "in": "path", "required": True, "schema": NAME_SCHEMA}  # production, candidate, ...


def _error_schema() -> dict:
    return {"type": "object", "properties": {"error": {"type": "string"}, "detail": {}}}


def _response(description: str, schema: dict | None = None) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _error_schema()}},
    }


def _id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}


def _json_body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


BODY_ERRORS = {
    "400": _response("Body is not JSON"),
    "413": _response("Body larger than 1 MiB"),
    "422": _response("Invalid request; detail.field names the field"),
    "503": _response("Database unreachable"),
}
SUBMITTED = {
    "201": _response("Model created and queued", OBJECT),
    "200": _response("An existing model serves this request (deduplicated)", OBJECT),
}


# W3C Trace Context: with tracing on (README, "Traces"), the submission's span is a child of this one; a
# header that cannot be parsed is ignored (a new trace).
TRACEPARENT = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the caller's trace context (W3C Trace Context); read only when tracing is on",
}


def _operation(summary: str, responses: dict, **extra: Any) -> dict:
    return {"summary": summary, "responses": responses, **extra}


def _model_get(summary: str, ok: str, more: dict | None = None) -> dict:
    return {
        "get": _operation(
            summary,
            {"200": _response(ok, OBJECT), "404": _response("Unknown id"), **(more or {})},
            parameters=[_id("model_id")],
        )
    }


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "sfq: strategy-factory training queue", "version": "2"},
    "paths": {
        "/train": {
            "post": _operation(
                "Submit a training request (deduplicated by fingerprint)",
                {**SUBMITTED, **BODY_ERRORS},
                parameters=[TRACEPARENT],
                requestBody=_json_body(spec.request_schema()),
            )
        },
        "/train/batch": {
            "post": _operation(
                "One spec, four models: one per target_col (open, close, high, low), in one transaction",
                {
                    "201": _response("At least one model created", OBJECT),
                    "200": _response("All four existed (deduplicated)", OBJECT),
                    **BODY_ERRORS,
                },
                parameters=[TRACEPARENT],
                requestBody=_json_body(spec.request_schema(batch=True)),
            )
        },
        "/retrain/{model_id}": {
            "post": _operation(
                "Train the model's spec again on the bars there are now (retrain_of links the two)",
                {**SUBMITTED, **BODY_ERRORS, "404": _response("Unknown id")},
                parameters=[_id("model_id")],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "force": {
                                "type": "boolean",
                                "description": "a fresh run even without new bars (the next run number)",
                            }
                        },
                    },
                    required=False,
                ),
            )
        },
        "/api/train_with_parent": {
            "post": _operation(
                "A child model: the parent's spec with overrides (hyperparameters merged key by key)",
                {**SUBMITTED, **BODY_ERRORS},
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["parent_model_id"],
                        "additionalProperties": False,
                        "properties": {
                            "parent_model_id": {"type": "integer"},
                            "overrides": {"type": "object", "description": "request fields to change"},
                        },
                    }
                ),
            )
        },
        "/models": {
            "get": _operation(
                "List models: filter by status, symbol, algorithm; sort by id or a stored metric (the models "
                "without it last); page by offset or after=<a page's next> (keyset: as fast deep as first)",
                {"200": _response("A page of models", OBJECT), "422": _response("Bad query parameter")},
                parameters=[
                    {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                    for name, kind in (
                        ("status", "string"),
                        ("symbol", "string"),
                        ("algorithm", "string"),
                        ("sort", "string"),
                        ("order", "string"),
                        ("limit", "integer"),
                        ("offset", "integer"),
                        ("after", "string"),
                    )
                ],
            )
        },
        "/models/{model_id}": _model_get(
            "A model: status, spec, metrics, timings, error, feature importances", "The model"
        ),
        "/models/{model_id}/cancel": {
            "post": _operation(
                "Cancel a queued model (it never runs) or a running one (its training is killed)",
                {
                    "200": _response("Cancelled", OBJECT),
                    "404": _response("Unknown id"),
                    "409": _response("The model is already finished"),
                },
                parameters=[_id("model_id")],
            )
        },
        "/models/{model_id}/lineage": _model_get(
            "Ancestors and descendants, each with its changes against its parent and metric moves",
            "The chain",
        ),
        "/models/{model_id}/features": _model_get("Feature importances, ranked", "The importances"),
        "/models/{model_id}/predictions": _model_get(
            "Held-out predictions next to the actual values", "The predictions"
        ),
        "/models/{model_id}/artifact": {
            "get": _operation(
                "The model file (skops), streamed; its recorded SHA-256 in the X-Content-SHA256 header",
                {
                    "200": {
                        "description": "The file",
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _response("Unknown id"),
                    "409": _response(
                        "The model has no file (not completed), or it was evicted (a forecast rebuilds it)"
                    ),
                },
                parameters=[_id("model_id")],
            )
        },
        "/models/{model_id}/predict": {
            "post": _operation(
                "Predict from the latest bar with the stored model (run by a worker)",
                {
                    "200": _response("The forecast", OBJECT),
                    "202": _response("Still queued after `wait` seconds: poll its url", OBJECT),
                    "404": _response("Unknown id"),
                    "409": _response("The model is not completed, or there are no bars"),
                    "422": _response("The forecast failed (detail says why), or a bad `wait`"),
                },
                parameters=[
                    _id("model_id"),
                    WAIT,
                ],
            )
        },
        "/models/{model_id}/lockbox": {
            "post": _operation(
                "Evaluate the model once on its lockbox (run by a worker); every request counts as a look",
                {
                    "200": _response("The lockbox evaluation, with lockbox_looks", OBJECT),
                    "202": _response("Still queued after `wait` seconds: poll its url", OBJECT),
                    "404": _response("Unknown id"),
                    "409": _response("The model is not completed, or its request set no lockbox_start"),
                    "422": _response("The evaluation failed (detail says why), or a bad `wait`"),
                },
                parameters=[
                    _id("model_id"),
                    WAIT,
                ],
            )
        },
        "/forecasts/{forecast_id}": {
            "get": _operation(
                "A forecast",
                {"200": _response("The forecast", OBJECT), "404": _response("Unknown id")},
                parameters=[_id("forecast_id")],
            )
        },
        "/models/{model_id}/simulations": _model_get("The model's backtests", "The backtests"),
        "/simulate": {
            "post": _operation(
                "Backtest a completed model with a strategy (run by a worker)",
                {
                    "200": _response("The finished backtest", OBJECT),
                    "202": _response("Still queued after `wait` seconds: poll its url", OBJECT),
                    **BODY_ERRORS,
                    "404": _response("Unknown model"),
                    "409": _response("The model is not completed"),
                },
                parameters=[WAIT],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["model_id"],
                        "additionalProperties": False,
                        "properties": {
                            "model_id": {"type": "integer"},
                            "strategy": {
                                "type": "string",
                                "description": "long_short (default) or long_only",
                            },
                            "params": {
                                "type": "object",
                                "description": "threshold, sizing, scale, cap, cost_bps",
                            },
                            "priority": {"type": "integer"},
                        },
                    }
                ),
            )
        },
        "/simulations/{simulation_id}": {
            "get": _operation(
                "A backtest: parameters, period, metrics, equity curve",
                {"200": _response("The backtest", OBJECT), "404": _response("Unknown id")},
                parameters=[_id("simulation_id")],
            )
        },
        "/sweeps": {
            "post": _operation(
                "One model per combination of a grid, all enqueued in one transaction",
                {"201": _response("The sweep", OBJECT), **BODY_ERRORS},
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["grid"],
                        "additionalProperties": False,
                        "properties": {
                            "base": {
                                "type": "object",
                                "description": "the spec every combination starts from",
                            },
                            "grid": {
                                "type": "object",
                                "description": '{"field": [values], "hyperparameters.x": [...]}',
                            },
                            "priority": {
                                "type": "integer",
                                "description": "default -10 (below single requests)",
                            },
                        },
                    }
                ),
            )
        },
        "/sweeps/{sweep_id}": {
            "get": _operation(
                "Progress and a leaderboard by any metric, with PSR per row and the top entry's DSR",
                {
                    "200": _response("The sweep", OBJECT),
                    "404": _response("Unknown id"),
                    "422": _response("Bad query parameter"),
                },
                parameters=[
                    _id("sweep_id"),
                    *(
                        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                        for name, kind in (("sort", "string"), ("order", "string"), ("limit", "integer"))
                    ),
                ],
            )
        },
        "/studies": {
            "post": _operation(
                "A search over spec fields with Optuna's samplers and pruners; each trial is an sfq model",
                {"201": _response("The study", OBJECT), **BODY_ERRORS},
                requestBody=_json_body(STUDY),
            )
        },
        "/studies/{study_id}": {
            "get": _operation(
                "Progress, best trial(s), every trial, best so far, DSR of the best, parameter importances",
                {
                    "200": _response("The study", OBJECT),
                    "404": _response("Unknown id"),
                    "422": _response("Bad flag"),
                },
                parameters=[
                    _id("study_id"),
                    {"name": "importances", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
            )
        },
        "/studies/{study_id}/stop": {
            "post": _operation(
                "Ask for no more trials; running ones finish",
                {"200": _response("The study", OBJECT), "404": _response("Unknown id")},
                parameters=[_id("study_id")],
            )
        },
        "/strategies/{name}": {
            "get": _operation(
                "A named strategy: each alias's model, its latest forecast, and its live record (live "
                "directional accuracy, IC, paper-trading equity) beside its held-out and backtest figures, "
                "and its decay flag (live_sharpe, backtest_sharpe, standard_error, n, decayed)",
                {"200": _response("The strategy", OBJECT), "404": _response("Unknown strategy")},
                parameters=[NAME],
            )
        },
        "/strategies/{name}/history": {
            "get": _operation(
                "Every alias move of a strategy, newest first: who, when, why, from which model",
                {"200": _response("The history", OBJECT), "404": _response("Unknown strategy")},
                parameters=[NAME],
            )
        },
        "/strategies/{name}/aliases/{alias}": {
            "post": _operation(
                "Point a strategy's alias at a completed model, recorded with who (the token's name), when "
                "and why; the strategy is created by its first alias",
                {
                    "200": _response("The move, as its history records it", OBJECT),
                    **BODY_ERRORS,
                    "403": _response("The database role may not move a production alias"),
                    "404": _response("A path that names no route (an empty or a slashed name)"),
                    "409": _response("The model is not completed"),
                },
                parameters=[NAME, ALIAS],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["model_id", "reason"],
                        "additionalProperties": False,
                        "properties": {
                            "model_id": {"type": "integer"},
                            "reason": {"type": "string", "description": "why the alias moves (kept)"},
                        },
                    }
                ),
            )
        },
        "/strategies/{name}/aliases/{alias}/retrain-policy": {
            "put": _operation(
                "Set how a strategy's alias is retrained (every n bars, weekly or cron, UTC) and how a "
                "retrained model is judged against it: it takes the alias if its objective is not worse by "
                "more than the tolerance, else the candidate alias (README: Retrain policies)",
                {
                    "200": _response("The policy as stored", OBJECT),
                    **BODY_ERRORS,
                    "403": _response("The database role may not set a production alias's policy"),
                    "404": _response("Unknown strategy or alias"),
                },
                parameters=[NAME, ALIAS],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["policy"],
                        "additionalProperties": False,
                        "properties": {
                            "policy": {
                                "type": "object",
                                "description": '{"kind": "every_n_bars", "n": 5}, '
                                '{"kind": "weekly", "weekday": "friday", "time": "21:30"} '
                                'or {"kind": "cron", "cron": "0 22 * * 1-5"}',
                            },
                            "tolerance": {
                                "type": "number",
                                "description": "how much worse than the champion's the objective may be "
                                "(default 0)",
                            },
                            "objective": {
                                "type": "string",
                                "description": "cv_ic (default), cv_r2, cv_directional_accuracy, cv_rmse, "
                                "or ic, r2, directional_accuracy, rmse (held-out or walk-forward)",
                            },
                        },
                    }
                ),
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics: jobs, workers, throughput, training durations, database pool, "
                "strategy aliases' live decay flags",
                {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/healthz": {
            "get": _operation(
                "Liveness, including the database",
                {"200": _response("Healthy", OBJECT), "503": _response("Database unreachable")},
            )
        },
        "/openapi.json": {"get": _operation("This document", {"200": _response("OpenAPI 3.1", OBJECT)})},
    },
}
