"""The dashboard's page of one study: progress, the best value so far against trial number and against
core-seconds, parameter importances (fANOVA), the objective against each parameter, the Pareto front for
two objectives, the family tree of an `evolution` study, and every trial (queue_app.studies, as
GET /studies/{id})."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, studies
from queue_app.ui import charts
from queue_app.ui.compare import button, pick
from queue_app.ui.html import REFRESH_S, chart, compact, esc, link, not_found, number, page, section, table

HEADERS = ["trial", "model", "state", "value(s)", "parent", "core-s", "params"]


def _model_link(model_id: int | None) -> str:
    return link(f"/ui/models/{model_id}", f"model {model_id}") if model_id else "-"


def _row(trial: dict[str, Any]) -> list[str]:
    model = (pick(trial["model_id"]) if trial["model_id"] else "") + _model_link(trial["model_id"])
    values = ", ".join(number(v) for v in trial["values"]) if trial["values"] else esc(trial["error"] or "")
    return [
        esc(trial["number"]),
        model,
        esc(trial["state"]),
        values,
        esc(trial["parent_number"] if trial["parent_number"] is not None else ""),
        number(trial["cpu_seconds"], 1),
        compact(trial["params"]),
    ]


def _charts(board: dict[str, Any]) -> dict[str, str | None]:
    """Every chart of the page as SVG (None: not enough trials for it yet)."""
    objective = board["objectives"][0]["metric"]
    trials = [t for t in board["trials"] if t["state"] in studies.SUCCEEDED and t["values"]]
    drawn: dict[str, str | None] = {
        "best": None,
        "importances": None,
        "parameters": None,
        "pareto": None,
        "tree": None,
    }
    if not trials:
        return drawn
    drawn["best"] = charts.best_so_far(objective, board["best_so_far"])
    if shares := (board["importances"] or {}).get("values"):
        drawn["importances"] = charts.importances(list(shares), list(shares.values()), "fANOVA", width=8.0)
    # The six parameters that matter most (by importance, where known: a subset by its likeliest member).
    ranked = list((board["importances"] or {}).get("values") or {})

    def rank(name: str) -> tuple[int, str]:
        places = [i for i, key in enumerate(ranked) if key == name or key.startswith(name + ".")]
        return min(places, default=len(ranked)), name

    names = sorted({name for t in trials for name in t["params"]}, key=rank)
    points = {
        name: [(_plain(t["params"][name]), t["values"][0]) for t in trials if name in t["params"]]
        for name in names[:6]
    }
    drawn["parameters"] = charts.metric_by_parameter(objective, points)
    if len(board["objectives"]) == 2:
        front = [t["values"] for t in board["best"]]
        drawn["pareto"] = charts.pareto(
            [o["metric"] for o in board["objectives"]], [t["values"] for t in trials], front
        )
    if board["mutations"]:
        edges = [(m["parent_number"], m["number"]) for m in board["mutations"]]
        drawn["tree"] = charts.lineage(objective, board["trials"], edges)
    return drawn


def _plain(value: Any) -> Any:
    """A parameter's value as a chart places it: numbers as numbers, a list (a feature set) as a+b."""
    return value if isinstance(value, int | float | str) else "+".join(map(str, value))


async def study(request: Request) -> HTMLResponse:
    pool, study_id = request.app.state.pool, request.path_params["study_id"]
    found = await gateway.run_pooled(pool, gateway.get_study(study_id))
    if found is None:
        return not_found(f"no study with id {study_id}")
    trials = await gateway.run_pooled(pool, gateway.study_trials(study_id))
    board = await run_in_threadpool(studies.report, found, trials)
    drawn = await run_in_threadpool(_charts, board)
    progress = board["progress"]
    objectives = ", ".join(f"{o['metric']} ({o['direction']})" for o in board["objectives"])
    best = "".join(
        f"<li>trial {esc(t['number'])}: {_model_link(t['model_id'])} "
        f"{', '.join(number(v) for v in t['values'])} <code>{compact(t['params'])}</code></li>"
        for t in board["best"]
    )
    dsr = board["best_by_sharpe"]
    selection = (
        f"best by backtest Sharpe: model {dsr['model_id']} (Sharpe {dsr['sharpe']:.2f}), deflated Sharpe "
        f"ratio {dsr['deflated_sharpe_ratio']:.3f} with N = {dsr['trials']} trials"
        if dsr
        else "deflated Sharpe ratio: needs backtested trials"
    )
    states = ", ".join(f"{state} {progress[state]}" for state in studies.SHOWN_STATES)
    ended = f"{found['state']}" + (f" ({found['reason']})" if found["reason"] else "")
    summary = (
        f"{ended}: {progress['trials']} trials of {found['n_trials'] or '-'} ({states}); "
        f"{progress['cpu_seconds']:.1f} core-seconds, {progress['pruned_cpu_seconds']:.1f} in pruned trials"
    )
    body = "".join(
        [
            section(
                "Progress",
                f'<p id="progress">{esc(summary)}</p><p>sampler {esc(found["sampler"])}, pruner '
                f'{esc(found["pruner"])}, objective {esc(objectives)}</p><ul id="best">{best}</ul>'
                f'<p id="dsr">{esc(selection)}</p>',
            ),
            section("Best so far", chart(drawn["best"], "study-best", "no trial has succeeded yet")),
            section(
                "Parameter importances",
                chart(drawn["importances"], "study-importances", (board["importances"] or {}).get("why", "")),
            ),
            section("Objective by parameter", chart(drawn["parameters"], "study-parameters", "no trial yet")),
            *(
                [section("Pareto front", chart(drawn["pareto"], "study-pareto", "no trial yet"))]
                if len(board["objectives"]) == 2
                else []
            ),
            *(
                [section("Family tree", chart(drawn["tree"], "study-tree", "no evolved trial yet"))]
                if found["sampler"] == "evolution"
                else []
            ),
            section(
                "Trials",
                table(HEADERS, map(_row, board["trials"]), numeric=[0, 1, 5], id_="study-trials") + button(),
            ),
        ]
    )
    unfinished = found["state"] == "running" or progress["running"]
    return page(f"Study {study_id}", body, refresh_s=REFRESH_S if unfinished else None)
