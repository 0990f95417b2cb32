"""The dashboard's pages: overview, models leaderboard, one model, one sweep. Each reads with the same
named queries as the API and `sfq status`, and draws its charts on the server (queue_app.charts)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import charts, lineage, sweeps
from queue_app.db import QUERIES, load_queries
from queue_app.spec import FIELDS
from queue_app.ui.forms import inputs
from queue_app.ui.html import (
    chart,
    compact,
    day,
    esc,
    link,
    not_found,
    number,
    page,
    section,
    status,
    table,
    url,
    when,
)

UI_QUERIES = load_queries("ui.sql")
REFRESH_S = 5  # the overview, and a model page while its model is queued or running
PAGE_SIZE = 25
STATUSES = ("queued", "running", "completed", "failed", "cancelled")  # the sfq_model_status enum
LEADERBOARD_METRICS = ("directional_accuracy", "directional_base_rate", "ic", "r2", "rmse")
EVOLVE_FIELDS = tuple(
    f
    for f in FIELDS
    if f.name not in ("symbol", "parent_model_id", "retrain_of", "run", "priority", "timeout_s")
)
TOKENS_NOTE = (
    '<p class="notice">This API has tokens configured: a browser form cannot send the '
    "<code>Authorization: Bearer</code> header, so these actions are refused here. Use the HTTP API or "
    "<code>sfq</code> (docs/dashboard.md).</p>"
)


async def rows(request: Request, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with request.app.state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchall()


def _progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return "-"
    fraction = progress.get("fraction")
    bar = (
        f'<progress max="1" value="{esc(fraction)}"></progress> ' if isinstance(fraction, int | float) else ""
    )
    return f"{bar}{esc(progress.get('phase', ''))}"


async def overview(request: Request) -> HTMLResponse:
    stale_after_s = request.app.state.rescue_after_s
    workers = await rows(request, QUERIES["status_workers"])
    depth = await rows(request, QUERIES["queue_depth"])
    rates = await rows(request, QUERIES["throughput"], minutes=60)
    failures = await rows(request, QUERIES["recent_failures"], limit=10)
    recent_sweeps = await rows(request, UI_QUERIES["recent_sweeps"], limit=10)

    def worker_row(w: dict[str, Any]) -> list[str]:
        alive = w["registered"] and w["silent_s"] <= stale_after_s
        beat = f"{w['silent_s']:.0f} s ago" if w["registered"] else "stopped"
        job = "idle"
        if w["model_id"]:
            model_id = w["model_id"]
            job = f"{link(f'/ui/models/{model_id}', f'model {model_id}')} {_progress(w['progress'])}"
        return [
            esc(w["host"]),
            esc(w["pid"]),
            esc(w["instance"]),
            job,
            when(w["since"]),
            beat if alive else f'<span class="status-failed">{beat}</span>',
        ]

    completed = [r["completed"] for r in rates]
    failed = [r["failed"] for r in rates]
    svg = await run_in_threadpool(charts.throughput, [r["minute"] for r in rates], completed, failed)
    body = "".join(
        [
            section(
                "Workers",
                table(
                    ["host", "pid", "n", "current job", "since", "last heartbeat"],
                    map(worker_row, workers),
                    id_="workers",
                ),
            ),
            section(
                "Queue depth",
                table(
                    ["queue", "status", "jobs"],
                    ([esc(r["queue"]), esc(r["status"]), esc(r["jobs"])] for r in depth),
                    numeric=[2],
                    id_="queues",
                ),
            ),
            section(
                "Models finished per minute, last hour",
                f"<p>{sum(completed)} completed, {sum(failed)} failed</p>"
                + chart(svg, "throughput", "no data"),
            ),
            section(
                "Recent failures",
                table(
                    ["model", "symbol", "algorithm", "finished", "reason"],
                    (
                        [
                            link(f"/ui/models/{f['id']}", f["id"]),
                            esc(f["symbol"]),
                            esc(f["algorithm"]),
                            when(f["finished_at"]),
                            f'<span class="wrap">{esc(f["error"])}</span>',
                        ]
                        for f in failures
                    ),
                    id_="failures",
                ),
            ),
            section(
                "Sweeps",
                table(
                    ["sweep", "created", "combinations", "new models", "finished"],
                    (
                        [
                            link(f"/ui/sweeps/{s['id']}", s["id"]),
                            when(s["created_at"]),
                            esc(s["combinations"]),
                            esc(s["created"]),
                            esc(s["finished"]),
                        ]
                        for s in recent_sweeps
                    ),
                    numeric=[2, 3, 4],
                ),
            ),
        ]
    )
    return page("Overview", body, refresh_s=REFRESH_S)


def _choice(raw: str | None, allowed: tuple[str, ...], default: str) -> str:
    return raw if raw in allowed else default


async def models(request: Request) -> HTMLResponse:
    """The leaderboard: GET /models' filters, sort by id or any stored metric, 25 a page."""
    query = request.query_params
    notes = []
    sort = query.get("sort", "id")
    if not re.fullmatch(r"[a-z0-9_]{1,64}", sort):
        notes.append(f"sort must be 'id' or a metric name, got {sort!r}")
        sort = "id"
    order = _choice(query.get("order"), ("asc", "desc"), "desc")
    state = _choice(query.get("status"), STATUSES, "")
    symbol = query.get("symbol", "").strip()[:200]
    algorithm = query.get("algorithm", "").strip()[:200]
    page_no = int(query["page"]) if re.fullmatch(r"[0-9]{1,6}", query.get("page", "")) else 1
    params = {
        "status": state or None,
        "symbol": symbol or None,
        "algorithm": algorithm or None,
        "metric": None if sort == "id" else sort,
        "direction": 1 if order == "asc" else -1,
        "limit": PAGE_SIZE,
        "offset": (max(page_no, 1) - 1) * PAGE_SIZE,
    }
    found = await rows(request, QUERIES["list_models"], **params)
    (total,) = await rows(request, QUERIES["count_models"], **params)
    here = {"status": state, "symbol": symbol, "algorithm": algorithm, "sort": sort, "order": order}

    def header(name: str, label: str) -> str:
        flip = "asc" if sort == name and order == "desc" else "desc"
        arrow = {"desc": " ▼", "asc": " ▲"}[order] if sort == name else ""
        return link(url("/ui/models", **{**here, "sort": name, "order": flip}), label + arrow)

    headers = [header("id", "model"), "status", "symbol", "algorithm", "target", "horizon"]
    headers += [header(m, m.replace("directional_", "dir. ")) for m in LEADERBOARD_METRICS]
    headers += ["progress", "submitted", "parent"]
    body_rows = []
    for m in found:
        metrics = m["metrics"] or {}
        body_rows.append(
            [
                link(f"/ui/models/{m['id']}", m["id"]),
                status(m["status"]),
                esc(m["symbol"]),
                esc(m["algorithm"]),
                esc(f"{m['target_col']} {m['target_transform']}"),
                esc(m["horizon"]),
            ]
            + [number(metrics.get(name)) for name in LEADERBOARD_METRICS]
            + [
                _progress(m["progress"]) if m["status"] in ("queued", "running") else "",
                when(m["submitted_at"]),
                link(f"/ui/models/{m['parent_model_id']}", m["parent_model_id"])
                if m["parent_model_id"]
                else "",
            ]
        )
    options = "".join(
        f'<option value="{s}"{" selected" if s == state else ""}>{s or "any"}</option>'
        for s in ("", *STATUSES)
    )
    filters = (
        '<form class="filters" method="get" action="/ui/models">'
        f'<label>status<select name="status">{options}</select></label>'
        f'<label>symbol<input name="symbol" value="{esc(symbol)}" size="8"></label>'
        f'<label>algorithm<input name="algorithm" value="{esc(algorithm)}" size="14"></label>'
        f'<label>sort by (id or any metric)<input name="sort" value="{esc(sort)}" size="18"></label>'
        f'<label>order<select name="order"><option{" selected" if order == "desc" else ""}>desc</option>'
        f"<option{' selected' if order == 'asc' else ''}>asc</option></select></label>"
        "<button>Filter</button></form>"
    )
    pages = max(1, -(-total["total"] // PAGE_SIZE))
    nav = [f"page {page_no} of {pages} ({total['total']} models)"]
    if page_no > 1:
        nav.insert(0, link(url("/ui/models", **here, page=page_no - 1), "← previous"))
    if page_no < pages:
        nav.append(link(url("/ui/models", **here, page=page_no + 1), "next →"))
    errors = "".join(f'<p class="error">{esc(n)}</p>' for n in notes)
    body = section(
        "Leaderboard",
        errors
        + filters
        + table(headers, body_rows, numeric=[0, 5, 6, 7, 8, 9, 10], id_="leaderboard")
        + f'<p id="pages">{" · ".join(nav)}</p>',
    )
    return page("Models", body)


def _key_values(values: dict[str, Any], id_: str) -> str:
    return table(
        ["", ""],
        ([esc(k), number(v) if isinstance(v, int | float) else compact(v)] for k, v in values.items()),
        id_=id_,
    )


def _folds(folds: list[dict[str, Any]] | None) -> str:
    if not folds:
        return '<p class="muted">no folds yet</p>'
    keys = list(dict.fromkeys(k for fold in folds for k in fold))
    cells = (
        [
            number(fold.get(k)) if isinstance(fold.get(k), int | float) else compact(fold.get(k, ""))
            for k in keys
        ]
        for fold in folds
    )
    return table([esc(k) for k in keys], cells, id_="folds")


def _lineage(model_id: int, chain: dict[str, Any]) -> str:
    def row(m: dict[str, Any]) -> list[str]:
        name = f"model {m['id']}" + (" (this one)" if m["id"] == model_id else "")
        changes = "; ".join(
            f"{esc(k)}: {compact(c['from'])} → {compact(c['to'])}" for k, c in (m["changes"] or {}).items()
        )
        moved = "; ".join(
            f"{k} {v['change']:+.4f}"
            for k, v in (m["metric_changes"] or {}).items()
            if v["change"] is not None
        )
        return [
            esc(m["depth"]),
            link(f"/ui/models/{m['id']}", name),
            status(m["status"]),
            esc(f"{m['symbol']} {m['algorithm']}"),
            number(m["metrics"]["directional_accuracy"]),
            f'<span class="wrap">{changes}</span>',
            esc(moved),
        ]

    return table(
        ["depth", "model", "status", "", "dir. accuracy", "changes", "metric changes"],
        map(row, chain["models"]),
        numeric=[0, 4],
        id_="lineage",
    )


def _buttons(model: dict[str, Any], locked: bool) -> str:
    base = f"/ui/models/{model['id']}"
    disabled = " disabled" if locked else ""
    parts = [TOKENS_NOTE if locked else ""]
    if model["status"] in ("queued", "running"):
        parts.append(
            f'<form class="inline" method="post" action="{base}/cancel">'
            f'<button class="danger" id="cancel"{disabled}>Cancel</button></form>'
        )
    parts.append(
        f'<form class="inline" method="post" action="{base}/retrain">'
        f'<button id="retrain"{disabled}>Retrain</button> '
        '<label><input type="checkbox" name="force" value="true"> force a fresh run</label></form>'
    )
    return "".join(parts)


def _evolve(model: dict[str, Any], locked: bool, values: dict[str, str]) -> str:
    disabled = " disabled" if locked else ""
    return (
        "<p class=muted>Fields to override in a child of this model; empty fields keep the parent's.</p>"
        f'<form class="grid" method="post" action="/ui/models/{model["id"]}/evolve" id="evolve">'
        f"{inputs(EVOLVE_FIELDS, values)}<div><button{disabled}>Evolve</button></div></form>"
    )


async def render_model(
    request: Request,
    model_id: int,
    locked: bool,
    message: str = "",
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The model page; also re-rendered by a refused action, with the API's message."""
    found = await rows(request, QUERIES["get_model"], model_id=model_id)
    if not found:
        return not_found(f"no model with id {model_id}")
    m = found[0]
    features = await rows(request, QUERIES["model_features"], model_id=model_id)
    predicted = await rows(request, QUERIES["model_predictions"], model_id=model_id)
    chain = lineage.build(model_id, await rows(request, QUERIES["lineage"], model_id=model_id))
    backtests = await rows(request, UI_QUERIES["default_backtest"], model_id=model_id)
    backtest = backtests[0] if backtests else None
    hold = []
    if backtest and backtest["status"] == "completed" and backtest["equity_curve"]:
        hold = await rows(
            request,
            UI_QUERIES["buy_and_hold"],
            symbol=m["symbol"],
            timeframe=m["timeframe"],
            start=backtest["period_start"],
            end=backtest["period_end"],
        )

    def draw() -> tuple[str | None, str | None, str | None]:
        top = features[:20]
        importance = (
            charts.importances([f["feature"] for f in top], [f["importance"] for f in top], top[0]["method"])
            if top
            else None
        )
        versus = (
            charts.predictions(
                [p["ts"] for p in predicted],
                [p["predicted"] for p in predicted],
                [p["actual"] for p in predicted],
                m["target_transform"],
            )
            if predicted
            else None
        )
        equity = None
        if hold:
            curve = backtest["equity_curve"]
            equity = charts.equity(
                [datetime.fromisoformat(ts) for ts, _ in curve],
                [v for _, v in curve],
                [h["ts"] for h in hold],
                [float(h["equity"]) for h in hold],
            )
        return importance, versus, equity

    importance_svg, predictions_svg, equity_svg = await run_in_threadpool(draw)
    finished = m["status"] not in ("queued", "running")
    worker = f"on {m['worker_host']} (pid {m['worker_pid']})" if m["worker_host"] else ""
    head = (
        (f'<p class="error" id="message">{esc(message)}</p>' if message else "")
        + f'<p id="status">{status(m["status"])} {_progress(m["progress"]) if not finished else ""} '
        + f'<span class="muted">submitted {when(m["submitted_at"])}, started {when(m["started_at"])}, '
        + f"finished {when(m['finished_at'])}, attempts {esc(m['attempts'])} {esc(worker)}</span></p>"
        + (f'<p class="error" id="model-error">{esc(m["error"])}</p>' if m["error"] else "")
        + _buttons(m, locked)
    )
    metrics = {k: v for k, v in (m["metrics"] or {}).items() if not isinstance(v, dict | list)}
    backtest_body = '<p class="muted">no backtest yet</p>'
    if backtest and backtest["status"] == "failed":
        backtest_body = f'<p class="error">backtest failed: {esc(backtest["error"])}</p>'
    elif backtest and backtest["status"] == "completed":
        b = backtest["metrics"]
        held = b.get("buy_and_hold") or {}
        figures = {
            "period": f"{day(backtest['period_start'])} to {day(backtest['period_end'])}",
            "return": number(b.get("total_return")),
            "buy & hold": number(held.get("total_return")),
            "excess": number(b.get("excess_return")),
            "sharpe": number(b.get("sharpe"), 2),
            "b&h sharpe": number(held.get("sharpe"), 2),
            "max dd": number(b.get("max_drawdown")),
            "psr": number(b.get("psr"), 2),
            "trades": number(b.get("n_trades")),
        }
        backtest_body = table(list(map(esc, figures)), [list(figures.values())], id_="backtest") + chart(
            equity_svg, "equity-chart", "no equity curve"
        )
    held_out = _key_values(metrics, "metrics") if metrics else "<p class=muted>none yet</p>"
    spec = f"<p>fingerprint <code id=fingerprint>{esc(m['fingerprint'])}</code></p>" + _key_values(
        m["spec"], "spec"
    )
    body = "".join(
        [
            section("Status", head),
            section("Backtest (long_short, default parameters) against buy and hold", backtest_body),
            section(
                "Predictions against actual values (test window)",
                chart(predictions_svg, "predictions-chart", "none yet"),
            ),
            '<div class="two">',
            section("Held-out metrics", held_out),
            section("Feature importances", chart(importance_svg, "importance-chart", "none yet")),
            "</div>",
            section("Cross-validation folds", _folds(m["fold_metrics"])),
            section("Lineage", _lineage(model_id, chain)),
            section("Evolve", _evolve(m, locked, values or {})),
            section("Spec and fingerprint", spec),
        ]
    )
    title = f"Model {model_id}: {m['symbol']} {m['algorithm']}"
    return page(title, body, refresh_s=None if finished else REFRESH_S, status_code=status_code)


async def model(request: Request, locked: bool) -> HTMLResponse:
    return await render_model(request, request.path_params["model_id"], locked)


async def sweep(request: Request) -> HTMLResponse:
    sweep_id = request.path_params["sweep_id"]
    found = await rows(request, QUERIES["get_sweep"], sweep_id=sweep_id)
    if not found:
        return not_found(f"no sweep with id {sweep_id}")
    s = found[0]
    sort = request.query_params.get("sort", sweeps.DEFAULT_SORT)
    if not re.fullmatch(r"(backtest\.)?[a-z0-9_]{1,64}", sort):
        sort = sweeps.DEFAULT_SORT
    progress = await rows(request, QUERIES["sweep_progress"], sweep_id=sweep_id)
    members = await rows(request, QUERIES["sweep_models"], sweep_id=sweep_id)
    board = sweeps.leaderboard(members, sort, request.query_params.get("order") != "asc", len(members))
    source, _, name = sort.rpartition(".")

    def metric(row: dict[str, Any]) -> Any:
        return ((row["backtest"] if source == "backtest" else row["metrics"]) or {}).get(name)

    points: dict[str, list[tuple[Any, float]]] = {key: [] for key in s["grid"]}
    for row in board["rows"]:
        if isinstance(metric(row), int | float):
            for key in points:
                points[key].append((row["combination"].get(key), metric(row)))
    drawn = any(points.values())
    svg = await run_in_threadpool(charts.metric_by_parameter, sort, points) if drawn else None
    done = ", ".join(f"{p['status']} {p['models']}" for p in progress)
    sorts = " · ".join(
        link(url(f"/ui/sweeps/{sweep_id}", sort=key), key)
        for key in ("backtest.sharpe", "ic", "directional_accuracy")
    )
    deflated = board["top_deflated_sharpe"]
    top = deflated and link(f"/ui/models/{deflated['model_id']}", deflated["model_id"])
    dsr = (
        f'<p id="dsr">Top model {top}: deflated '
        f"Sharpe ratio {number(deflated['deflated_sharpe_ratio'], 3)} after {esc(deflated['trials'])} "
        "backtested configurations.</p>"
        if deflated
        else '<p class="muted" id="dsr">deflated Sharpe ratio: needs two backtested models</p>'
    )
    rows_html = (
        [
            esc(r["rank"]),
            link(f"/ui/models/{r['model_id']}", r["model_id"]),
            status(r["status"]),
            compact(r["combination"]),
            number(r["metrics"]["directional_accuracy"]),
            number(r["metrics"]["ic"]),
            number((r["backtest"] or {}).get("sharpe"), 2),
            number((r["backtest"] or {}).get("psr"), 2),
            number((r["backtest"] or {}).get("total_return")),
            number((r["backtest"] or {}).get("max_drawdown"), 3),
        ]
        for r in board["rows"]
    )
    body = "".join(
        [
            section(
                "Progress",
                f'<p id="progress">{s["combinations"]} combinations ({s["created"]} new models): '
                f"{esc(done) or 'no models'}</p><p>grid: <code>{compact(s['grid'])}</code></p>",
            ),
            section(
                f"Leaderboard by {sort}",
                f"<p>sort by: {sorts}</p>"
                + table(
                    [
                        "rank",
                        "model",
                        "status",
                        "combination",
                        "dir. accuracy",
                        "ic",
                        "sharpe",
                        "psr",
                        "return",
                        "max dd",
                    ],
                    rows_html,
                    numeric=[0, 1, 4, 5, 6, 7, 8, 9],
                    id_="sweep-leaderboard",
                )
                + dsr,
            ),
            section(f"{sort} by swept parameter", chart(svg, "sweep-chart", "no model has this metric yet")),
        ]
    )
    unfinished = any(p["status"] in ("queued", "running") for p in progress)
    return page(f"Sweep {sweep_id}", body, refresh_s=REFRESH_S if unfinished else None)
