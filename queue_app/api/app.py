"""The HTTP API's route table, and the one table that turns sfq's errors into answers (ERROR_HANDLERS).
Endpoints are in queue_app.api.endpoints; queue_app.web serves them with the dashboard."""

from __future__ import annotations

from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

from queue_app.api import endpoints as e
from queue_app.api.http import JSON, error
from queue_app.errors import HTTP_STATUS, Malformed, Rejected, SfqError, TooLarge


class IdConvertor(IntegerConvertor):
    """Ids are bigints: a path with more digits names nothing (404) rather than reaching the database."""

    regex = "[0-9]{1,18}"


register_url_convertor("id", IdConvertor())

MODEL = "/models/{model_id:id}"
ROUTES = [
    Route("/train", e.train, methods=["POST"]),
    Route("/train/batch", e.train_batch, methods=["POST"]),
    Route("/retrain/{model_id:id}", e.retrain, methods=["POST"]),
    Route("/api/train_with_parent", e.train_with_parent, methods=["POST"]),
    Route("/models", e.list_models, methods=["GET"]),
    Route(MODEL, e.get_model, methods=["GET"], name="get_model"),
    Route(f"{MODEL}/cancel", e.cancel, methods=["POST"]),
    Route(f"{MODEL}/lineage", e.model_lineage, methods=["GET"]),
    Route(f"{MODEL}/features", e.model_features, methods=["GET"]),
    Route(f"{MODEL}/predictions", e.model_predictions, methods=["GET"]),
    Route(f"{MODEL}/artifact", e.model_artifact, methods=["GET"]),
    Route(f"{MODEL}/predict", e.predict, methods=["POST"]),
    Route("/forecasts/{forecast_id:id}", e.get_forecast, methods=["GET"], name="get_forecast"),
    Route(f"{MODEL}/simulations", e.model_simulations, methods=["GET"]),
    Route("/simulate", e.simulate, methods=["POST"]),
    Route(f"{MODEL}/lockbox", e.lockbox, methods=["POST"]),
    Route("/simulations/{simulation_id:id}", e.get_simulation, methods=["GET"], name="get_simulation"),
    Route("/sweeps", e.submit_sweep, methods=["POST"]),
    Route("/sweeps/{sweep_id:id}", e.get_sweep, methods=["GET"], name="get_sweep"),
    Route("/studies", e.create_study, methods=["POST"]),
    Route("/studies/{study_id:id}", e.get_study, methods=["GET"], name="get_study"),
    Route("/studies/{study_id:id}/stop", e.stop_study, methods=["POST"]),
    Route("/strategies/{name}", e.get_strategy, methods=["GET"], name="get_strategy"),
    Route("/strategies/{name}/history", e.strategy_history, methods=["GET"], name="strategy_history"),
    Route("/strategies/{name}/aliases/{alias}", e.move_alias, methods=["POST"]),
    Route("/strategies/{name}/aliases/{alias}/retrain-policy", e.set_retrain_policy, methods=["PUT"]),
    Route("/metrics", e.metrics, methods=["GET"]),
    Route("/healthz", e.healthz, methods=["GET"]),
    Route("/openapi.json", e.openapi, methods=["GET"]),
]  # every path and method here has its entry in queue_app.api.openapi (tests/test_api_server.py)


def _detail(exc: SfqError) -> object:
    if isinstance(exc, TooLarge):
        return {"limit": exc.limit}
    if isinstance(exc, Rejected) and not isinstance(exc, Malformed):
        return {"field": exc.field}
    return exc.detail


async def _sfq_error(request: Request, exc: SfqError) -> JSON:
    # sfq's errors as answers: the most specific class of an error decides its status (queue_app.errors).
    status = next((HTTP_STATUS[kind] for kind in type(exc).__mro__ if kind in HTTP_STATUS), 500)
    return error(status, exc.message, _detail(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSON:
    return error(exc.status_code, exc.detail)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    return error(500, "internal error", type(exc).__name__)


ERROR_HANDLERS = {HTTPException: _http_error, SfqError: _sfq_error, Exception: _unexpected}
