"""The dashboard's actions: plain HTML forms posted here, each running the same gateway call as the API
(submit, retrain, evolve, cancel), then redirecting to the model. A refusal re-renders the page with the
API's own message and status (422, 404, 409)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from queue_app import gateway
from queue_app.errors import Conflict, NotFound, Rejected
from queue_app.gateway import Call
from queue_app.spec import FIELDS
from queue_app.ui import model as model_page
from queue_app.ui.forms import EVOLVE_FIELDS, inputs, read, request_from
from queue_app.ui.html import TOKENS_NOTE, message, page, section

REFUSED = {Rejected: 422, NotFound: 404, Conflict: 409}


def _status(error: Exception) -> int:
    return next(REFUSED[kind] for kind in type(error).__mro__ if kind in REFUSED)


def _to_model(model_id: int) -> RedirectResponse:
    return RedirectResponse(f"/ui/models/{model_id}", status_code=303)  # 303: the browser GETs the page


async def _model_action(
    request: Request, locked: bool, action: Callable[[int, dict[str, str]], Call]
) -> Response:
    """Run the call `action(model id, form)` builds; redirect to the resulting model, or show why not."""
    model_id = request.path_params["model_id"]
    form: dict[str, str] = {}
    try:
        form = await read(request)
        answer: Any = await gateway.run_pooled(request.app.state.pool, action(model_id, form))
    except tuple(REFUSED) as error:
        return await model_page.render(request, model_id, locked, error.message, form, _status(error))
    return _to_model(answer.model_id if isinstance(answer, gateway.Submission) else answer["id"])


async def retrain(request: Request, locked: bool) -> Response:
    return await _model_action(
        request, locked, lambda model_id, form: gateway.retrain(model_id, form.get("force") == "true", "ui")
    )


async def evolve(request: Request, locked: bool) -> Response:
    return await _model_action(
        request,
        locked,
        lambda model_id, form: gateway.evolve(model_id, request_from(form, EVOLVE_FIELDS), "ui"),
    )


async def cancel(request: Request, locked: bool) -> Response:
    return await _model_action(request, locked, lambda model_id, form: gateway.cancel_model(model_id))


def _submit_page(
    locked: bool, values: dict[str, str], refusal: str = "", status_code: int = 200
) -> HTMLResponse:
    disabled = " disabled" if locked else ""
    body = (
        message(refusal)
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
        submission = await gateway.run_pooled(
            request.app.state.pool, gateway.submit(request_from(form), "ui")
        )
    except Rejected as error:
        return _submit_page(locked, form, error.message, status_code=422)
    return _to_model(submission.model_id)
