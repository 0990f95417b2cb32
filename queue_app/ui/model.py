"""The dashboard's page of one model: status and progress, its default backtest against buy and hold,
predictions against actual values, held-out metrics, feature importances, CV folds, lineage, the retrain /
evolve / cancel forms, and the spec. Re-rendered with the API's message when an action is refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, lineage
from queue_app.ui import charts
from queue_app.ui.forms import EVOLVE_FIELDS, inputs
from queue_app.ui.html import (
    REFRESH_S,
    TOKENS_NOTE,
    chart,
    compact,
    day,
    esc,
    link,
    message,
    not_found,
    number,
    page,
    progress,
    section,
    status,
    table,
    when,
)
from queue_app.vocabulary import UNFINISHED


@dataclass
class Shown:
    """What the page shows of a model, read from the database."""

    model: dict[str, Any]
    features: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    chain: dict[str, Any]
    backtest: dict[str, Any] | None
    buy_and_hold: list[dict[str, Any]]


async def _read(request: Request, model_id: int) -> Shown | None:
    pool = request.app.state.pool
    model = await gateway.run_pooled(pool, gateway.get_model(model_id))
    if model is None:
        return None
    backtest = await gateway.run_pooled(pool, gateway.default_backtest(model_id))
    hold = []
    if backtest and backtest["status"] == "completed" and backtest["equity_curve"]:
        hold = await gateway.run_pooled(
            pool,
            gateway.buy_and_hold(
                model["symbol"], model["timeframe"], backtest["period_start"], backtest["period_end"]
            ),
        )
    return Shown(
        model=model,
        features=await gateway.run_pooled(pool, gateway.model_features(model_id)),
        predictions=await gateway.run_pooled(pool, gateway.model_predictions(model_id)),
        chain=lineage.build(model_id, await gateway.run_pooled(pool, gateway.lineage(model_id))),
        backtest=backtest,
        buy_and_hold=hold,
    )


def _draw(shown: Shown) -> tuple[str | None, str | None, str | None]:
    """The importance, predictions and equity charts (matplotlib: run in a thread)."""
    top = shown.features[:20]
    importance = (
        charts.importances([f["feature"] for f in top], [f["importance"] for f in top], top[0]["method"])
        if top
        else None
    )
    predicted = shown.predictions
    versus = (
        charts.predictions(
            [p["ts"] for p in predicted],
            [p["predicted"] for p in predicted],
            [p["actual"] for p in predicted],
            shown.model["target_transform"],
        )
        if predicted
        else None
    )
    equity = None
    if shown.buy_and_hold:
        curve = shown.backtest["equity_curve"]
        equity = charts.equity(
            [datetime.fromisoformat(ts) for ts, _ in curve],
            [v for _, v in curve],
            [h["ts"] for h in shown.buy_and_hold],
            [float(h["equity"]) for h in shown.buy_and_hold],
        )
    return importance, versus, equity


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
    if model["status"] in UNFINISHED:
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


def _lockbox(model: dict[str, Any]) -> str:
    """A lockbox is shown with how often it was looked at: a lockbox consulted to choose is spent."""
    if not (start := (model["spec"] or {}).get("lockbox_start")):
        return ""
    return (
        f'<p id="lockbox">lockbox from {esc(start)}: looked at {esc(model["lockbox_looks"])} time(s) '
        f'<span class="muted">(POST /models/{model["id"]}/lockbox; every look is counted)</span></p>'
    )


def _status(model: dict[str, Any], locked: bool, refusal: str) -> str:
    live = progress(model["progress"]) if model["status"] in UNFINISHED else ""
    worker = f"on {model['worker_host']} (pid {model['worker_pid']})" if model["worker_host"] else ""
    times = (
        f"submitted {when(model['submitted_at'])}, started {when(model['started_at'])}, "
        f"finished {when(model['finished_at'])}, attempts {esc(model['attempts'])} {esc(worker)}"
    )
    return (
        message(refusal)
        + f'<p id="status">{status(model["status"])} {live} <span class="muted">{times}</span></p>'
        + (f'<p class="error" id="model-error">{esc(model["error"])}</p>' if model["error"] else "")
        + _lockbox(model)
        + _buttons(model, locked)
    )


def _backtest(backtest: dict[str, Any] | None, equity_svg: str | None) -> str:
    if backtest and backtest["status"] == "failed":
        return f'<p class="error">backtest failed: {esc(backtest["error"])}</p>'
    if not backtest or backtest["status"] != "completed":
        return '<p class="muted">no backtest yet</p>'
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
        "hit rate": number(b.get("hit_rate")),
    }
    return table(list(map(esc, figures)), [list(figures.values())], id_="backtest") + chart(
        equity_svg, "equity-chart", "no equity curve"
    )


async def render(
    request: Request,
    model_id: int,
    locked: bool,
    refusal: str = "",
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The model page; also re-rendered by a refused action, with the API's message."""
    shown = await _read(request, model_id)
    if shown is None:
        return not_found(f"no model with id {model_id}")
    m = shown.model
    importance_svg, predictions_svg, equity_svg = await run_in_threadpool(_draw, shown)
    metrics = {k: v for k, v in (m["metrics"] or {}).items() if not isinstance(v, dict | list)}
    held_out = _key_values(metrics, "metrics") if metrics else "<p class=muted>none yet</p>"
    spec = f"<p>fingerprint <code id=fingerprint>{esc(m['fingerprint'])}</code></p>" + _key_values(
        m["spec"], "spec"
    )
    body = "".join(
        [
            section("Status", _status(m, locked, refusal)),
            section(
                "Backtest (long_short, default parameters) against buy and hold",
                _backtest(shown.backtest, equity_svg),
            ),
            section(
                "Predictions against actual values (test window)",
                chart(predictions_svg, "predictions-chart", "none yet"),
            ),
            '<div class="two">',
            section("Held-out metrics", held_out),
            section("Feature importances", chart(importance_svg, "importance-chart", "none yet")),
            "</div>",
            section("Cross-validation folds", _folds(m["fold_metrics"])),
            section("Lineage", _lineage(model_id, shown.chain)),
            section("Evolve", _evolve(m, locked, values or {})),
            section("Spec and fingerprint", spec),
        ]
    )
    title = f"Model {model_id}: {m['symbol']} {m['algorithm']}"
    unfinished = m["status"] in UNFINISHED
    return page(title, body, refresh_s=REFRESH_S if unfinished else None, status_code=status_code)


async def model(request: Request, locked: bool) -> HTMLResponse:
    return await render(request, request.path_params["model_id"], locked)
