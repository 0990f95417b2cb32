"""The dashboard's page of one sweep: progress, the leaderboard with each row's PSR, the best model by
Sharpe with its deflated Sharpe ratio and the PBO (queue_app.sweeps, as GET /sweeps/{id}), and the metric
against each swept parameter."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, params, sweeps
from queue_app.ui import charts
from queue_app.ui.compare import button, pick
from queue_app.ui.html import (
    REFRESH_S,
    chart,
    compact,
    esc,
    link,
    not_found,
    number,
    page,
    section,
    status,
    table,
    url,
)
from queue_app.vocabulary import UNFINISHED

HEADERS = [
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
]


def _row(r: dict[str, Any]) -> list[str]:
    backtest = r["backtest"] or {}
    return [
        esc(r["rank"]),
        pick(r["model_id"]) + link(f"/ui/models/{r['model_id']}", r["model_id"]),
        status(r["status"]),
        compact(r["combination"]),
        number(r["metrics"]["directional_accuracy"]),
        number(r["metrics"]["ic"]),
        number(backtest.get("sharpe"), 2),
        number(backtest.get("psr"), 2),
        number(backtest.get("total_return")),
        number(backtest.get("max_drawdown"), 3),
    ]


def _selection(board: dict[str, Any]) -> str:
    """The best model by Sharpe with its DSR, and the PBO, in the CLI's words."""
    lines = [esc(line) for line in sweeps.summary_lines(board)]
    best = board["best_by_sharpe"]
    if best:
        dsr = lines.pop(0) + " " + link(f"/ui/models/{best['model_id']}", "open it")
    else:
        dsr = '<span class="muted">deflated Sharpe ratio: needs a backtested model</span>'
    return f'<p id="dsr">{dsr}</p><p id="pbo">{lines[-1]}</p>'


async def sweep(request: Request) -> HTMLResponse:
    pool, sweep_id = request.app.state.pool, request.path_params["sweep_id"]
    found = await gateway.run_pooled(pool, gateway.get_sweep(sweep_id))
    if found is None:
        return not_found(f"no sweep with id {sweep_id}")
    progress = await gateway.run_pooled(pool, gateway.sweep_progress(sweep_id))
    members = await gateway.run_pooled(pool, gateway.sweep_models(sweep_id))
    given = {key: value for key, value in request.query_params.items() if key in ("sort", "order")}
    parsed, _ = params.lenient(params.SweepQuery.parse, given)
    query = dataclasses.replace(parsed, limit=len(members))  # the whole sweep, for the chart
    curves = await gateway.run_pooled(pool, gateway.sweep_equity_curves(sweep_id))
    board = sweeps.leaderboard(members, query, curves)
    points: dict[str, list[tuple[Any, float]]] = {key: [] for key in found["grid"]}
    for row in board["rows"]:
        if (value := sweeps.metric(row, query.sort)) is not None:
            for key in points:
                points[key].append((row["combination"].get(key), value))
    drawn = any(points.values())
    svg = await run_in_threadpool(charts.metric_by_parameter, query.sort, points) if drawn else None
    done = ", ".join(f"{state} {count}" for state, count in progress.items())
    sorts = " · ".join(
        link(url(f"/ui/sweeps/{sweep_id}", sort=key), key)
        for key in ("backtest.sharpe", "ic", "directional_accuracy")
    )
    body = "".join(
        [
            section(
                "Progress",
                f'<p id="progress">{found["combinations"]} combinations ({found["created"]} new models): '
                f"{esc(done) or 'no models'}</p><p>grid: <code>{compact(found['grid'])}</code></p>",
            ),
            section(
                f"Leaderboard by {query.sort}",
                f"<p>sort by: {sorts}</p>"
                + table(
                    HEADERS,
                    map(_row, board["rows"]),
                    numeric=[0, 1, 4, 5, 6, 7, 8, 9],
                    id_="sweep-leaderboard",
                )
                + button()
                + _selection(board),
            ),
            section(
                f"{query.sort} by swept parameter", chart(svg, "sweep-chart", "no model has this metric yet")
            ),
        ]
    )
    unfinished = any(state in UNFINISHED for state in progress)
    return page(f"Sweep {sweep_id}", body, refresh_s=REFRESH_S if unfinished else None)
