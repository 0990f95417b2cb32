"""The dashboard's strategies: every strategy alias with its live record beside its backtest and the decay
flag (/ui/strategies), and one strategy (/ui/strategies/{name}): each alias's model, latest forecast,
live record against the same model's held-out metrics and default backtest, the live paper-trading
equity after the backtest's, and the alias history. The figures are those GET /strategies/{name} serves;
the decay flag is the workers' (workers/modelling/live.py `decay`), stored with the live record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway
from queue_app.ui import charts
from queue_app.ui.html import chart, esc, link, not_found, number, page, section, status, table, when

# The rows of an alias's record table: (label, the live figure's key, where the backtest's is, digits).
# `held_out` figures are the model's test window's scores, `backtest` the default backtest's metrics.
RECORD = (
    ("directional accuracy", ("directional_accuracy",), ("held_out", "directional_accuracy"), 4),
    ("ic", ("ic",), ("held_out", "ic"), 4),
    ("rmse", ("rmse",), ("held_out", "rmse"), 4),
    ("sharpe", ("paper_trading", "sharpe"), ("backtest", "sharpe"), 2),
    ("psr", ("paper_trading", "psr"), ("backtest", "psr"), 2),
    ("total return", ("paper_trading", "total_return"), ("backtest", "total_return"), 4),
    ("max drawdown", ("paper_trading", "max_drawdown"), ("backtest", "max_drawdown"), 4),
    ("hit rate", ("paper_trading", "hit_rate"), ("backtest", "hit_rate"), 4),
    ("trades", ("paper_trading", "n_trades"), ("backtest", "n_trades"), 0),
    ("bars", ("paper_trading", "n"), ("backtest", "n"), 0),
)


def _model_link(model_id: int) -> str:
    return link(f"/ui/models/{model_id}", f"model {model_id}")


def _strategy_link(name: str) -> str:
    return link(f"/ui/strategies/{name}", name)


def flag(decay: dict[str, Any] | None) -> str:
    """The decay flag: decayed (highlighted), holding, or why there is no verdict yet."""
    decay = decay or {}
    if decay.get("decayed") is True:
        return '<span class="flag-decayed">decayed</span>'
    if decay.get("decayed") is False:
        return '<span class="status-completed">holding</span>'
    return f'<span class="muted">{esc(decay.get("reason") or "no verdict yet")}</span>'


def _dig(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values


def _list_row(alias: dict[str, Any], backtests: dict[int, dict[str, Any]]) -> list[str]:
    decay = alias["decay"] or {}
    tested = backtests.get(alias["model_id"])
    backtest_sharpe = decay.get("backtest_sharpe")
    if backtest_sharpe is None and tested and tested["status"] == "completed":
        backtest_sharpe = (tested["metrics"] or {}).get("sharpe")
    return [
        _strategy_link(alias["strategy"]),
        esc(alias["alias"]),
        flag(decay),
        number(decay.get("live_sharpe"), 2),
        number(backtest_sharpe, 2),
        number(decay.get("standard_error"), 2),
        number(decay.get("n")),
        _model_link(alias["model_id"]),
        esc(f"{alias['realised']} / {alias['forecasts']}"),
        number(alias["directional_accuracy"]),
        number(alias["ic"]),
    ]


LIST_HEADERS = [
    "strategy",
    "alias",
    "decay",
    "live sharpe",
    "backtest sharpe",
    "std. error",
    "n",
    "model",
    "realised / forecasts",
    "live dir. acc.",
    "live ic",
]


async def strategies(request: Request) -> HTMLResponse:
    pool = request.app.state.pool
    aliases = await gateway.run_pooled(pool, gateway.strategy_alias_records())
    backtests = await gateway.run_pooled(pool, gateway.default_backtests([a["model_id"] for a in aliases]))
    decayed = sum((a["decay"] or {}).get("decayed") is True for a in aliases)
    summary = (
        f'<p id="decayed-count">{len(aliases)} aliases in {len({a["strategy"] for a in aliases})} '
        f"strategies; {decayed} decayed (live Sharpe below the backtest's by more than its standard "
        "error)</p>"
    )
    body = section(
        "Aliases: live record against the default backtest",
        summary
        + table(
            LIST_HEADERS,
            (_list_row(a, backtests) for a in aliases),
            numeric=[3, 4, 5, 6, 8, 9, 10],
            id_="strategies",
        ),
    )
    return page("Strategies", body)


def _record(alias: dict[str, Any], backtest: dict[str, Any] | None) -> str:
    """The live figures beside the held-out and default-backtest ones of the same model."""
    live = {**(alias["live"] or {})}
    tested = backtest["metrics"] if backtest and backtest["status"] == "completed" else {}
    reference = {"held_out": alias["held_out"] or {}, "backtest": tested or {}}
    rows = [
        [esc(label), number(_dig(live, mine), digits), number(_dig(reference, theirs), digits)]
        for label, mine, theirs, digits in RECORD
    ]
    decay = live.get("decay") or {}
    rows.append(["sharpe's standard error (live)", number(decay.get("standard_error"), 2), ""])
    headers = ["", "live", "held-out (test window) / default backtest"]
    return table(headers, rows, numeric=[1, 2], id_=f"record-{alias['alias']}")


def _curve(points: list[list[Any]] | None) -> tuple[list[datetime], list[float]]:
    points = points or []
    return [datetime.fromisoformat(ts) for ts, _ in points], [value for _, value in points]


def _draw(alias: dict[str, Any], backtest: dict[str, Any] | None) -> str | None:
    """The default backtest's equity over its test window, then the live paper trading's (matplotlib: run
    in a thread); None before the live record has an equity curve."""
    if not alias["live_equity_curve"]:
        return None
    curves = []
    if backtest and backtest["status"] == "completed" and backtest["equity_curve"]:
        curves.append(("backtest (test window)", *_curve(backtest["equity_curve"])))
    curves.append(("live paper trading", *_curve(alias["live_equity_curve"])))
    return charts.equities(curves)


def _latest(alias: dict[str, Any]) -> str:
    if alias["latest_forecast_id"] is None:
        return '<span class="muted">no forecast yet</span>'
    return (
        f"latest forecast as of {esc(when(alias['latest_as_of']))}: {status(alias['latest_status'])} "
        f"{number(alias['latest_prediction'], 6)} (price {number(alias['latest_predicted_price'], 2)})"
    )


def _verdict(decay: dict[str, Any] | None) -> str:
    """The rule's figures: live Sharpe against the backtest's less one standard error of the live one."""
    decay = decay or {}
    if decay.get("decayed") is None:
        return ""
    sign = "<" if decay["decayed"] else "≥"
    return (
        '<p class="muted">live Sharpe '
        f"{number(decay['live_sharpe'], 2)} {sign} backtest Sharpe {number(decay['backtest_sharpe'], 2)} "
        f"− standard error {number(decay['standard_error'], 2)} (annualised, over {esc(decay['n'])} "
        "paper-traded bars)</p>"
    )


async def _alias_section(alias: dict[str, Any], backtest: dict[str, Any] | None) -> str:
    name = alias["alias"]
    svg = await run_in_threadpool(_draw, alias, backtest)
    decay = (alias["live"] or {}).get("decay")
    head = (
        f"<p>{_model_link(alias['model_id'])} ({esc(alias['symbol'])} {esc(alias['timeframe'])} "
        f"{esc(alias['algorithm'])}, {status(alias['model_status'])}), here since "
        f"{esc(when(alias['moved_at']))}; {esc(alias['realised'] or 0)} of "
        f"{esc(alias['forecasts'] or 0)} forecasts realised</p>"
        f'<p id="latest-{esc(name)}">{_latest(alias)}</p>'
        f'<p id="decay-{esc(name)}">decay: {flag(decay)}</p>{_verdict(decay)}'
    )
    return section(
        f"Alias {name}",
        head
        + _record(alias, backtest)
        + chart(svg, f"equity-{name}", "no live paper trading yet (no forecast's bar has been realised)"),
        id_=f"alias-{name}",
    )


def _history_row(move: dict[str, Any]) -> list[str]:
    previous = move["previous_model_id"]
    return [
        when(move["moved_at"]),
        esc(move["alias"]),
        _model_link(move["model_id"]),
        _model_link(previous) if previous else "-",
        esc(move["moved_by"]),
        esc(move["via"]),
        f'<span class="wrap">{esc(move["reason"])}</span>',
    ]


async def strategy(request: Request) -> HTMLResponse:
    name = request.path_params["name"]
    pool = request.app.state.pool
    # A name with a NUL character cannot be text in PostgreSQL: no strategy has it.
    if "\x00" in name or await gateway.run_pooled(pool, gateway.get_strategy(name)) is None:
        return not_found(f"no strategy named {name!r}")
    aliases = await gateway.run_pooled(pool, gateway.strategy_aliases(name))
    backtests = await gateway.run_pooled(pool, gateway.default_backtests([a["model_id"] for a in aliases]))
    history = await gateway.run_pooled(pool, gateway.strategy_history(name))
    sections = [await _alias_section(a, backtests.get(a["model_id"])) for a in aliases]
    history_table = table(
        ["moved", "alias", "model", "from", "by", "via", "reason"], map(_history_row, history), id_="history"
    )
    body = "".join([*sections, section("Alias history", history_table)])
    return page(f"Strategy {name}", body)
