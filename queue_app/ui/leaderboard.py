"""The dashboard's models page: GET /models' filters and sort (queue_app.params.ModelQuery), 25 a page.
"next" starts after the last row shown (keyset: the thousandth page as fast as the second); a page asked for
by its number alone, and "previous", start `offset` rows in. A bad parameter is shown with the API's
message and left out."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, params
from queue_app.ui.compare import button, pick
from queue_app.ui.html import esc, link, number, page, progress, section, status, table, url, when
from queue_app.vocabulary import STATUSES, UNFINISHED

PAGE_SIZE = 25
METRICS = ("directional_accuracy", "directional_base_rate", "ic", "r2", "rmse")


def _row(model: dict[str, Any]) -> list[str]:
    metrics = model["metrics"] or {}
    parent = model["parent_model_id"]
    return [
        pick(model["id"]) + link(f"/ui/models/{model['id']}", model["id"]),
        status(model["status"]),
        esc(model["symbol"]),
        esc(model["algorithm"]),
        esc(f"{model['target_col']} {model['target_transform']}"),
        esc(model["horizon"]),
        *(number(metrics.get(name)) for name in METRICS),
        progress(model["progress"]) if model["status"] in UNFINISHED else "",
        when(model["submitted_at"]),
        link(f"/ui/models/{parent}", parent) if parent else "",
    ]


def _filters(query: params.ModelQuery) -> str:
    options = "".join(
        f'<option value="{s}"{" selected" if s == (query.status or "") else ""}>{s or "any"}</option>'
        for s in ("", *STATUSES)
    )
    orders = "".join(
        f"<option{' selected' if query.order == order else ''}>{order}</option>" for order in ("desc", "asc")
    )
    return (
        '<form class="filters" method="get" action="/ui/models">'
        f'<label>status<select name="status">{options}</select></label>'
        f'<label>symbol<input name="symbol" value="{esc(query.symbol or "")}" size="8"></label>'
        f'<label>algorithm<input name="algorithm" value="{esc(query.algorithm or "")}" size="14"></label>'
        f'<label>sort by (id or any metric)<input name="sort" value="{esc(query.sort)}" size="18"></label>'
        f'<label>order<select name="order">{orders}</select></label>'
        "<button>Filter</button></form>"
    )


async def models(request: Request) -> HTMLResponse:
    given = {key: value.strip() for key, value in request.query_params.items() if value.strip()}
    raw_page = given.pop("page", "")
    page_no = max(int(raw_page), 1) if re.fullmatch(r"[0-9]{1,6}", raw_page) else 1
    offset = (page_no - 1) * PAGE_SIZE
    keyset = "after" in given  # reached by "next": the page starts after the row its `after` names
    given.update(limit=str(PAGE_SIZE), **({} if keyset else {"offset": str(offset)}))
    query, notes = params.lenient(params.ModelQuery.parse, given)
    if keyset and query.after is None:  # a bad `after`, left out: the page by its number
        query = dataclasses.replace(query, offset=offset)
    counted = await gateway.run_pooled(request.app.state.pool, gateway.count_models(query))
    found, after = query.page(
        await gateway.run_pooled(request.app.state.pool, gateway.list_models(query, counted))
    )
    total = counted.total
    here = {
        "status": query.status,
        "symbol": query.symbol,
        "algorithm": query.algorithm,
        "sort": query.sort,
        "order": query.order,
    }

    def header(name: str, label: str) -> str:
        flip = "asc" if query.sort == name and query.order == "desc" else "desc"
        arrow = {"desc": " ▼", "asc": " ▲"}[query.order] if query.sort == name else ""
        return link(url("/ui/models", **{**here, "sort": name, "order": flip}), label + arrow)

    headers = [header("id", "model"), "status", "symbol", "algorithm", "target", "horizon"]
    headers += [header(m, m.replace("directional_", "dir. ")) for m in METRICS]
    headers += ["progress", "submitted", "parent"]
    pages = max(1, -(-total // PAGE_SIZE))
    nav = [f"page {page_no} of {pages} ({total} models)"]
    if page_no > 1:
        nav.insert(0, link(url("/ui/models", **here, page=page_no - 1), "← previous"))
    if page_no < pages and after is not None:
        nav.append(link(url("/ui/models", **here, page=page_no + 1, after=after), "next →"))
    errors = "".join(f'<p class="error">{esc(note)}</p>' for note in notes)
    body = section(
        "Leaderboard",
        errors
        + _filters(query)
        + table(headers, map(_row, found), numeric=[0, 5, 6, 7, 8, 9, 10], id_="leaderboard")
        + button()
        + f'<p id="pages">{" · ".join(nav)}</p>',
    )
    return page("Models", body)
