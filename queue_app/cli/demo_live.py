"""`sfq demo --live`: a strategy in production. Real bars but AAPL's last days, a Ridge model promoted as
a strategy's `production` alias, then the held-back days arriving one at a time through `sfq bars
import`: each brings a forecast made by the workers on their own (the bars_arrived trigger), realises
the ones whose bar it is, and the live record is printed beside the backtest's figures.

With execution_lag 1 and horizon 1 a forecast made at bar t is realised at bar t + 2 (entry at t + 1's
close, exit at t + 2's). So the strategy asks for a forecast when it is promoted (POST
/models/{id}/predict, as of the last bar held), and the second new day realises it; the new days' own
forecasts wait for bars still to come, and the demo says which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from queue_app import bars, db, embedded, gateway
from queue_app.cli.common import wait_for
from queue_app.cli.demo import DEMO_DATABASE, _post, _say, _start, _stop_all
from queue_app.config import Settings, database_url
from queue_app.errors import Unavailable

LIVE_DATABASE = f"{DEMO_DATABASE}_live"
SYMBOL = "AAPL"
NEW_DAYS = 2  # the days held back, then arriving one at a time
STRATEGY = "aapl-daily"
MODEL = {"symbol": SYMBOL, "algorithm": "Ridge", "hyperparameters": {"alpha": 10}}


# The model's forecasts as the demo waits for and prints them: how many bars after as_of realise each
# (execution_lag + horizon), and how many there are so far.
def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _prepare(url: str) -> list[bars.Bar]:
    """The schema and the sample bars, AAPL's last NEW_DAYS held back (returned)."""
    _say(f"database {LIVE_DATABASE}: schema, then real daily bars, {SYMBOL}'s last {NEW_DAYS} days held back")
    print("applied:", ", ".join(db.upgrade(url)))
    held: list[bars.Bar] = []
    with gateway.connect(url, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            if symbol == SYMBOL:
                rows, held = rows[:-NEW_DAYS], rows[-NEW_DAYS:]
            inserted, _ = bars.load(conn, symbol, "1d", rows)
            print(f"  {symbol}: {inserted} daily bars {rows[0].ts:%Y-%m-%d} .. {rows[-1].ts:%Y-%m-%d}")
    print(f"  held back: {SYMBOL} {', '.join(f'{bar.ts:%Y-%m-%d}' for bar in held)}")
    return held


def _train_and_promote(conn: psycopg.Connection, api_url: str) -> int:
    _say(f"training a fast model: POST /train {json.dumps(MODEL)}")
    status, answer = _post(f"{api_url}/train", MODEL)
    model_id = answer["model_id"]
    print(f"  {status} -> model {model_id}")
    final = wait_for(conn, [model_id], timeout=900)[model_id]
    if final["status"] != "completed":
        raise Unavailable(f"model {model_id} is {final['status']}: {final.get('error')}")

    reason = f"demo: Ridge on {SYMBOL} daily, trained on every bar up to today"
    _say(f"promoting model {model_id}: POST /strategies/{STRATEGY}/aliases/production")
    status, _ = _post(
        f"{api_url}/strategies/{STRATEGY}/aliases/production", {"model_id": model_id, "reason": reason}
    )
    print(f"  {status}")
    for move in _get(f"{api_url}/strategies/{STRATEGY}/history")["history"]:
        print(
            f"  history: {STRATEGY}/{move['alias']} -> model {move['model_id']} "
            f"(previous {move['previous_model_id']}) by {move['moved_by']} via {move['via']} "
            f"at {move['moved_at']}: {move['reason']!r}"
        )

    _say(f"the strategy's forecast at promotion: POST /models/{model_id}/predict")
    status, forecast = _post(f"{api_url}/models/{model_id}/predict", {})
    print(
        f"  {status} as of {forecast.get('as_of')}: prediction {forecast.get('prediction')} "
        f"(predicted close {forecast.get('predicted_price')})"
    )
    return model_id


def _settled(conn: psycopg.Connection, model_id: int, as_of: Any) -> bool:
    """The forecast of `as_of` answered, every forecast whose bars are there realised, and the live record
    counting them all."""
    forecasts = gateway.run(conn, gateway.model_forecasts_with_bars(model_id))
    if not any(f["as_of"] == as_of for f in forecasts) or any(f["status"] == "queued" for f in forecasts):
        return False
    if any(f["realised"] is None and f["bars_after"] >= f["needs"] for f in forecasts):
        return False
    record = gateway.run(conn, gateway.live_record_counts(model_id))
    completed = [f for f in forecasts if f["status"] == "completed"]
    realised = sum(f["realised"] is not None for f in completed)
    return record is not None and (record["forecasts"], record["realised"]) == (len(completed), realised)


def _arrive(url: str, conn: psycopg.Connection, model_id: int, day: int, bar: bars.Bar, folder: Path) -> None:
    """One new day: its bar imported as a user would (`sfq bars import`), then wait for the workers."""
    path = folder / f"{SYMBOL.lower()}-{bar.ts:%Y-%m-%d}.csv"
    path.write_text(
        "date,open,high,low,close,volume\n"
        f"{bar.ts:%Y-%m-%d},{bar.open!r},{bar.high!r},{bar.low!r},{bar.close!r},{bar.volume!r}\n"
    )
    _say(f"day {day}: a new {SYMBOL} bar, {bar.ts:%Y-%m-%d}: sfq bars import {path.name} --symbol {SYMBOL}")
    started = time.monotonic()
    imported = subprocess.run(
        [sys.executable, "-m", "queue_app.cli", "bars", "import", str(path), "--symbol", SYMBOL],
        env={**os.environ, "POSTGRES_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    print("  " + (imported.stdout + imported.stderr).strip().replace("\n", "\n  "))
    if imported.returncode:
        raise Unavailable(f"sfq bars import exited with {imported.returncode}")
    deadline = time.monotonic() + 300
    while not _settled(conn, model_id, bar.ts):
        if time.monotonic() > deadline:
            raise Unavailable(f"no answered forecast as of {bar.ts:%Y-%m-%d} for model {model_id} in 300 s")
        time.sleep(0.2)
    print(
        f"  forecast made by a worker and live record updated {time.monotonic() - started:.1f} s after "
        "the import started (the import's own process start included)"
    )
    _print_forecasts(conn, model_id)


def _print_forecasts(conn: psycopg.Connection, model_id: int) -> None:
    for f in gateway.run(conn, gateway.model_forecasts_with_bars(model_id)):
        if f["realised"] is not None:
            outcome = f"realised {f['realised']:+.6f} (bar {f['realised_at']:%Y-%m-%d})"
        else:
            more = f["needs"] - f["bars_after"]
            outcome = f"not yet: needs bar as_of+{f['needs']} ({more} more bar{'s' if more > 1 else ''})"
        prediction = f"{f['prediction']:+.6f}" if f["prediction"] is not None else f["status"]
        print(f"  forecast {f['id']:<4} as of {f['as_of']:%Y-%m-%d}  prediction {prediction}  {outcome}")


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _wait_backtest(conn: psycopg.Connection, model_id: int) -> None:
    """The default backtest every trained model gets (the figures the live ones stand beside), answered."""
    deadline = time.monotonic() + 300
    while (row := gateway.run(conn, gateway.default_backtest(model_id))) is None or row["status"] == "queued":
        if time.monotonic() > deadline:
            raise Unavailable(f"model {model_id}'s default backtest not answered in 300 s")
        time.sleep(0.2)


def _figures(label: str, n: Any, scored: dict[str, Any], paper: dict[str, Any]) -> str:
    """One line of a record: score()'s figures, then the paper trading's (the default backtest's)."""
    return (
        f"  {label:<12} n {n}  directional accuracy {_figure(scored.get('directional_accuracy'))}  "
        f"ic {_figure(scored.get('ic'))}  paper trading: total return {_figure(paper.get('total_return'))}  "
        f"sharpe {_figure(paper.get('sharpe'))}"
    )


def _report(api_url: str) -> None:
    _say(f"GET /strategies/{STRATEGY}: the live record beside the backtest")
    strategy = _get(f"{api_url}/strategies/{STRATEGY}")
    for alias in strategy["aliases"]:
        live, backtest = alias["live"], alias["backtest"]
        held_out = backtest.get("held_out") or {}
        live_paper, test_paper = live.get("paper_trading") or {}, backtest.get("paper_trading") or {}
        print(
            f"  {alias['alias']} model {alias['model_id']}: forecasts {live['forecasts']}, "
            f"realised {live['realised']}"
        )
        print(_figures("live record:", live.get("n", 0), live, live_paper))
        print(_figures("backtest:", held_out.get("n", "n/a"), held_out, test_paper))
        decay = alias["decay"]
        verdict = {True: "decayed", False: "holding"}.get(decay["decayed"], decay["reason"])
        print(f"  {'decay:':<12} {verdict} (live Sharpe against the backtest's, less one standard error)")
    print(
        f"  ({NEW_DAYS} live days score one realised forecast: the live figures say how the model is doing, "
        "not yet whether it is any good)"
    )


def run(settings: Settings, workers: int) -> None:
    started_cluster = not settings.postgres_url and not embedded.is_running(settings.home)
    url = gateway.recreate_database(database_url(settings), LIVE_DATABASE)
    processes: list[tuple[subprocess.Popen, str]] = []
    try:
        held = _prepare(url)
        api_url = _start(url, workers, processes)
        with gateway.connect(url, autocommit=True) as conn, tempfile.TemporaryDirectory() as folder:
            model_id = _train_and_promote(conn, api_url)
            for day, bar in enumerate(held, 1):
                _arrive(url, conn, model_id, day, bar, Path(folder))
            _wait_backtest(conn, model_id)
            _report(api_url)
        _say(f"the strategy stays in database {LIVE_DATABASE}: POSTGRES_URL='{url}' sfq strategy {STRATEGY}")
    finally:
        _stop_all(processes, settings, started_cluster)
