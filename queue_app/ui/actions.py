"""The dashboard's actions: plain HTML forms posted here, each running the same named query as the API
(submit, retrain, evolve, cancel_model), then redirecting to the model. A refusal re-renders the page
with the API's own message (RequestRejected.message, or the 404/409 text)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from queue_app.enqueue import Conflict, NotFound, RequestRejected, request_params, run_async
from queue_app.spec import FIELDS
from queue_app.ui.forms import FormRejected, inputs, read, request_from
from queue_app.ui.html import esc, page, section
from queue_app.ui.pages import EVOLVE_FIELDS, TOKENS_NOTE, render_model

REFUSED = {RequestRejected: 422, FormRejected: 422, NotFound: 404, Conflict: 409}


def _message(error: Exception) -> str:
    return error.message if isinstance(error, RequestRejected) else str(error)


async def _call(request: Request, query: str, params: dict[str, Any]) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        return (await run_async(conn, query, params))[0]


def _to_model(model_id: int) -> RedirectResponse:
    return RedirectResponse(f"/ui/models/{model_id}", status_code=303)  # 303: the browser GETs the page


async def _model_action(request: Request, locked: bool, query: str, params: Any) -> Response:
    """Run `query` with params(form); redirect to the resulting model, or show why not."""
    model_id = request.path_params["model_id"]
    form: dict[str, str] = {}
    try:
        form = await read(request)
        row = await _call(request, query, params(model_id, form))
    except tuple(REFUSED) as error:
        return await render_model(
            request, model_id, locked, _message(error), form, status_code=REFUSED[type(error)]
        )
    return _to_model(row.get("model_id", row.get("id")))


async def retrain(request: Request, locked: bool) -> Response:
    return await _model_action(
        request,
        locked,
        "retrain",
        lambda model_id, form: {"model_id": model_id, "force": form.get("force") == "true", "via": "ui"},
    )


async def evolve(request: Request, locked: bool) -> Response:
    def params(model_id: int, form: dict[str, str]) -> dict[str, Any]:
        overrides = request_from(form, EVOLVE_FIELDS)
        return {"parent_model_id": model_id, "overrides": json.dumps(overrides), "via": "ui"}

    return await _model_action(request, locked, "evolve", params)


async def cancel(request: Request, locked: bool) -> Response:
    return await _model_action(request, locked, "cancel_model", lambda model_id, form: {"model_id": model_id})


def _submit_page(
    locked: bool, values: dict[str, str], message: str = "", status_code: int = 200
) -> HTMLResponse:
    disabled = " disabled" if locked else ""
    body = (
        (f'<p class="error" id="message">{esc(message)}</p>' if message else "")
        + (TOKENS_NOTE if locked else "")
        + '<p class="muted">Empty fields take their defaults; lists are comma-separated, objects JSON.</p>'
        + f'<form class="grid" method="post" action="/ui/submit" id="submit">{inputs(FIELDS, values)}'
        + f'<div><button id="submit-button"{disabled}>Submit</button></div></form>'
    )
    return page("Submit a training request", section("Request", body), status_code=status_code)


async def submit_form(request: Request, locked: bool) -> HTMLResponse:
    return _submit_page(locked, {})


async def submit(request: Request, locked: bool) -> Response:
    form: dict[str, str] = {}
    try:
        form = await read(request)
        row = await _call(request, "submit", request_params(request_from(form), "ui"))
    except (RequestRejected, FormRejected) as error:
        return _submit_page(locked, form, _message(error), status_code=422)
    return _to_model(row["model_id"])
