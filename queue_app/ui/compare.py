"""The dashboard's comparison of 2 to 6 models (/ui/compare?ids=3,5,8, or repeated `id=`, as the
leaderboard's, a sweep's and a study's "Compare" forms send them): the spec fields whose values differ
(queue_app.lineage.spec_differences; the others listed once, folded), the held-out and cross-validated
metrics and the default backtest's side by side, and the default backtests' equity curves overlaid with
their drawdowns below. A bad selection (too few or too many ids, a non-integer, an unknown model) is a
4xx page that says what is wrong, and nothing else."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, lineage
from queue_app.ui import charts
from queue_app.ui.html import REFRESH_S, chart, compact, esc, link, number, page, section, status, table
from queue_app.vocabulary import UNFINISHED

FEWEST, MOST = 2, 6
ID = re.compile(r"[0-9]{1,18}")  # as the routes' id convertor: a bigint
TITLE = "Compare models"
FORM_ID = "compare"  # the form that the pick() checkboxes of a page belong to

HELD_OUT = ("directional_accuracy", "ic", "r2", "rmse")
CROSS_VALIDATED = tuple(f"cv_{name}_mean" for name in HELD_OUT)
# The default backtest's figures, each with how many decimals the model page shows it with.
BACKTEST = (("sharpe", 2), ("psr", 2), ("total_return", 4), ("max_drawdown", 4))


class Refused(Exception):
    """A selection the page cannot show: its message and HTTP status."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


def pick(model_id: int) -> str:
    """A checkbox that puts a model in the page's comparison form (see `button`), beside its link."""
    return (
        f'<input type="checkbox" name="id" value="{esc(model_id)}" form="{FORM_ID}" '
        f'aria-label="compare model {esc(model_id)}"> '
    )


def button() -> str:
    """The GET form that the ticked `pick` boxes of the page are sent with (no script needed)."""
    return (
        f'<form class="inline" id="{FORM_ID}" method="get" action="/ui/compare">'
        f'<button id="compare-button">Compare</button> <span class="muted">the ticked models '
        f"({FEWEST} to {MOST})</span></form>"
    )


def parse_ids(values: list[str]) -> list[int]:
    """The model ids of `ids=3,5,8` and `id=3&id=5` values, in their order, each once."""
    ids: list[int] = []
    for value in values:
        for token in value.split(","):
            if not (token := token.strip()):
                continue
            if not ID.fullmatch(token):
                raise Refused(f"not a model id: {token[:20]!r} (model ids are whole numbers)")
            if int(token) not in ids:
                ids.append(int(token))
    if not FEWEST <= len(ids) <= MOST:
        raise Refused(f"pick {FEWEST} to {MOST} different models to compare, got {len(ids)}")
    return ids


def _same(specs: list[dict[str, Any]], differ: dict[str, list[Any]]) -> dict[str, Any]:
    """The fields with one value in every spec (hyperparameters key by key, as spec_differences)."""
    same: dict[str, Any] = {}
    for field, value in sorted(specs[0].items()):
        if field == "hyperparameters" and all(isinstance(s.get(field), dict) for s in specs):
            same.update(
                (f"{field}.{name}", v) for name, v in sorted(value.items()) if f"{field}.{name}" not in differ
            )
        elif field not in differ:
            same[field] = value
    return same


def _specs(ids: list[int], models: dict[int, dict[str, Any]]) -> str:
    specs = [models[i]["spec"] or {} for i in ids]
    differ = lineage.spec_differences(specs)
    same = _same(specs, differ)
    headers = ["field", *(link(f"/ui/models/{i}", f"model {i}") for i in ids)]
    rows = ([esc(field), *map(compact, values)] for field, values in differ.items())
    note = "" if differ else '<p class="muted">These models have the same spec.</p>'
    folded = (
        f'<details id="same"><summary>{len(same)} fields have the same value in every model</summary>'
        + table(["field", "value"], ([esc(k), compact(v)] for k, v in same.items()), id_="same-fields")
        + "</details>"
    )
    return note + table(headers, rows, id_="differences") + folded


def _metrics(ids: list[int], models: dict[int, dict[str, Any]], backtests: dict[int, dict[str, Any]]) -> str:
    def completed(i: int) -> dict[str, Any]:
        found = backtests.get(i)
        return (found["metrics"] or {}) if found and found["status"] == "completed" else {}

    held = [models[i]["metrics"] or {} for i in ids]
    tested = [completed(i) for i in ids]
    rows = [["status", *(status(models[i]["status"]) for i in ids)]]
    rows += [[esc(name), *(number(m.get(name)) for m in held)] for name in HELD_OUT + CROSS_VALIDATED]
    rows += [
        [esc(f"backtest {name}"), *(number(b.get(name), digits) for b in tested)] for name, digits in BACKTEST
    ]
    headers = ["metric", *(link(f"/ui/models/{i}", f"model {i}") for i in ids)]
    return table(headers, rows, numeric=range(1, len(ids) + 1), id_="compare-metrics")


def _missing(model: dict[str, Any], backtest: dict[str, Any] | None) -> str | None:
    """Why a model's equity curve is not in the chart, or None when it is."""
    if backtest is None:
        return (
            "no backtest yet"
            if model["status"] in UNFINISHED + ("completed",)
            else f"model {model['status']}"
        )
    if backtest["status"] == "failed":
        return f"backtest failed: {backtest['error']}"
    if backtest["status"] != "completed":
        return f"backtest {backtest['status']}"
    return None if backtest["equity_curve"] else "no equity curve"


def _draw(ids: list[int], backtests: dict[int, dict[str, Any]], charted: list[int]) -> str | None:
    if not charted:
        return None
    curves = []
    for i in charted:
        curve = backtests[i]["equity_curve"]
        curves.append((f"model {i}", [datetime.fromisoformat(ts) for ts, _ in curve], [v for _, v in curve]))
    return charts.equities(curves)


async def _read(request: Request) -> tuple[list[int], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    query = request.query_params
    ids = parse_ids(query.getlist("ids") + query.getlist("id"))
    pool = request.app.state.pool
    models = {m["id"]: m for m in await gateway.run_pooled(pool, gateway.compared_models(ids))}
    if unknown := [i for i in ids if i not in models]:
        raise Refused(f"no model with id {', '.join(map(str, unknown))}", 404)
    return ids, models, await gateway.run_pooled(pool, gateway.default_backtests(ids))


def _refused(refusal: Refused) -> HTMLResponse:
    body = (
        f'<p class="error" id="message">{esc(refusal)}</p>'
        f"<p>Tick {FEWEST} to {MOST} models on the {link('/ui/models', 'models page')} and press Compare, "
        "or open <code>/ui/compare?ids=3,5,8</code>.</p>"
    )
    return page(TITLE, body, status_code=refusal.status_code)


async def compare(request: Request) -> HTMLResponse:
    try:
        ids, models, backtests = await _read(request)
    except Refused as refusal:
        return _refused(refusal)
    why = {i: _missing(models[i], backtests.get(i)) for i in ids}
    charted = [i for i in ids if why[i] is None]
    svg = await run_in_threadpool(_draw, ids, backtests, charted)
    left_out = "; ".join(f"model {i}: {reason}" for i, reason in why.items() if reason)
    missing = f'<p class="muted" id="not-charted">Not in the chart: {esc(left_out)}</p>' if left_out else ""
    body = "".join(
        [
            section("Spec fields that differ", _specs(ids, models)),
            section(
                "Metrics (held-out, cross-validated, default backtest)", _metrics(ids, models, backtests)
            ),
            section(
                "Default backtests (long_short, default parameters): equity and drawdown",
                chart(svg, "compare-chart", "no model has a backtest yet") + missing,
            ),
        ]
    )
    waiting = any(models[i]["status"] in UNFINISHED for i in ids) or any(
        b["status"] not in ("completed", "failed") for b in backtests.values()
    )
    title = f"{TITLE} {', '.join(map(str, ids))}"
    return page(title, body, refresh_s=REFRESH_S if waiting else None)
