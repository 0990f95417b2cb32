"""`sfq demo`: real bars, the API and one worker per core, models submitted over HTTP and by plain SQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psycopg

from queue_app import bars, db, embedded, gateway, lineage, params
from queue_app.cli.common import wait_for
from queue_app.cli.render import leaderboard
from queue_app.config import Settings, database_url

DEMO_DATABASE = os.environ.get("SFQ_DEMO_DATABASE", "sfq_demo")

HTTP_REQUESTS = [
    {
        "symbol": "AAPL",
        "algorithm": "RandomForest",
        "hyperparameters": {"n_estimators": 100, "min_samples_leaf": 20},
    },
    {
        "symbol": "MSFT",
        "algorithm": "HistGradientBoosting",
        "hyperparameters": {"max_iter": 100, "learning_rate": 0.05},
    },
    {"symbol": "IBM", "algorithm": "ElasticNet", "hyperparameters": {"alpha": 0.0005, "l1_ratio": 0.5}},
    {"symbol": "GOOG", "algorithm": "Ridge", "hyperparameters": {"alpha": 10}, "train_window": 1200},
    {
        "symbol": "AAPL",
        "algorithm": "ExtraTrees",
        "target_col": "open",
        "hyperparameters": {"n_estimators": 100, "min_samples_leaf": 20},
    },
]

# What another service would run: plain SQL, no Python, no Procrastinate.
SQL_INSERTS = [
    "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
    "VALUES ('MSFT', 'GradientBoosting', '{\"n_estimators\": 100, \"max_depth\": 3}') "
    "RETURNING model_id, deduplicated",
    "INSERT INTO training_requests (symbol, algorithm, hyperparameters, horizon) "
    "VALUES ('AAPL', 'Lasso', '{\"alpha\": 0.0001}', 5) RETURNING model_id, deduplicated",
    "INSERT INTO training_requests (symbol, algorithm, target_col, target_transform) "
    "VALUES ('IBM', 'LinearRegression', 'high', 'pct_change') RETURNING model_id, deduplicated",
    "INSERT INTO training_requests (symbol, algorithm, hyperparameters, features) "
    "VALUES ('GOOG', 'RandomForest', '{\"n_estimators\": 100, \"min_samples_leaf\": 20}', "
    "ARRAY['ret_1','ret_5','ret_20','vol_20','rsi_14','ma_ratio_50']) RETURNING model_id, deduplicated",
    # The same request as the first HTTP one: deduplicated, nothing is trained twice.
    "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
    "VALUES ('AAPL', 'RandomForest', '{\"min_samples_leaf\": 20, \"n_estimators\": 100.0}') "
    "RETURNING model_id, deduplicated",
]


def _say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the API exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the API did not answer {url} within {timeout:.0f} s")


def _stop(process: subprocess.Popen, name: str, timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in {timeout:.0f} s; killing it")
            process.kill()
            process.wait()


BEST = params.ModelQuery(status="completed", sort="directional_accuracy", limit=1)  # what the demo evolves


def _evolve_and_predict(conn: psycopg.Connection, api_url: str, best: int) -> None:
    """The research loop on the best model: a child with a longer horizon, its lineage, and the call a
    strategy makes (a forecast from the latest bar with the stored model)."""
    _say(f"evolving model {best}: POST /api/train_with_parent with a 5-bar horizon")
    status, answer = _post(
        f"{api_url}/api/train_with_parent", {"parent_model_id": best, "overrides": {"horizon": 5}}
    )
    print(f"  {status} -> model {answer['model_id']}")
    wait_for(conn, [answer["model_id"]], timeout=900)
    rows = gateway.run(conn, gateway.lineage(answer["model_id"]))
    print(lineage.render(lineage.build(answer["model_id"], rows)))

    _say(f"live forecast from model {best}: POST /models/{best}/predict")
    status, forecast = _post(f"{api_url}/models/{best}/predict", {})
    print(
        f"  {status} {forecast.get('symbol')} as of {forecast.get('as_of')}: predicted "
        f"{forecast.get('target_col')} in {forecast.get('horizon')} bar(s) {forecast.get('predicted_price')} "
        f"(close {forecast.get('reference_close')}, {forecast.get('target_transform')} "
        f"{forecast.get('prediction')})"
    )


def _prepare(url: str) -> None:
    _say(f"database {DEMO_DATABASE}: schema, then real daily bars (bokeh-sampledata)")
    print("applied:", ", ".join(db.upgrade(url)))
    with gateway.connect(url, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            inserted, _ = bars.load(conn, symbol, "1d", rows)
            print(f"  {symbol}: {inserted} daily bars {rows[0].ts:%Y-%m-%d} .. {rows[-1].ts:%Y-%m-%d}")


def _start(url: str, workers: int, processes: list[tuple[subprocess.Popen, str]]) -> str:
    """The API and the worker daemons, as `sfq api` and `sfq workers`; the API's URL once it answers."""
    env = {**os.environ, "POSTGRES_URL": url}
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    _say(f"starting the API on {api_url} and {workers} worker daemons (one per core)")
    api = subprocess.Popen(
        [sys.executable, "-m", "queue_app.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append((api, "api"))
    fleet = subprocess.Popen(
        [sys.executable, "-m", "queue_app.cli", "workers", "--count", str(workers)], env=env
    )
    processes.append((fleet, "workers"))
    _wait_http(f"{api_url}/healthz", api)
    return api_url


def _submit_http(api_url: str) -> list[int]:
    _say("submitting over HTTP: POST /train")
    model_ids = []
    for body in HTTP_REQUESTS:
        status, answer = _post(f"{api_url}/train", body)
        print(
            f"  {status} {body['symbol']:<5} {body['algorithm']:<20} -> model {answer['model_id']} "
            f"fingerprint {answer['fingerprint'][:12]}"
        )
        model_ids.append(answer["model_id"])
    return model_ids


def _submit_sql(conn: psycopg.Connection, model_ids: list[int]) -> None:
    _say("submitting by plain SQL: INSERT INTO training_requests ... RETURNING model_id")
    for statement in SQL_INSERTS:
        model_id, deduplicated = gateway.client_statement(conn, statement)
        note = (
            "  (deduplicated: same fingerprint as an earlier request, not trained again)"
            if deduplicated
            else ""
        )
        print(f"  {statement.split('VALUES ')[1].split(') RETURNING')[0]})  -> model {model_id}{note}")
        if model_id not in model_ids:
            model_ids.append(model_id)


def _train(conn: psycopg.Connection, model_ids: list[int]) -> None:
    _say(f"training {len(model_ids)} models")
    started = time.monotonic()
    final = wait_for(conn, model_ids, timeout=900)
    done = sum(m["status"] == "completed" for m in final.values())
    print(
        f"  {done}/{len(final)} completed in {time.monotonic() - started:.1f} s, "
        f"on {len({m['worker_pid'] for m in final.values()})} worker processes"
    )
    _say("leaderboard (held-out test window, sorted by directional accuracy)")
    ranked = params.ModelQuery(sort="directional_accuracy", limit=len(model_ids))
    print(leaderboard(gateway.leaderboard(conn, ranked)))


def run(settings: Settings, workers: int) -> None:
    started_cluster = not settings.postgres_url and not embedded.is_running(settings.home)
    url = gateway.recreate_database(database_url(settings), DEMO_DATABASE)
    processes: list[tuple[subprocess.Popen, str]] = []
    try:
        _prepare(url)
        api_url = _start(url, workers, processes)
        model_ids = _submit_http(api_url)
        with gateway.connect(url, autocommit=True) as conn:
            _submit_sql(conn, model_ids)
            _train(conn, model_ids)
            _evolve_and_predict(conn, api_url, gateway.leaderboard(conn, BEST)[0]["id"])
        _say(f"the models stay in database {DEMO_DATABASE}: POSTGRES_URL='{url}' sfq models")
    finally:
        _stop_all(processes, settings, started_cluster)


def _stop_all(
    processes: list[tuple[subprocess.Popen, str]], settings: Settings, started_cluster: bool
) -> None:
    """A demo's end, however it ended: its processes stopped, and the private cluster if it started it."""
    _say("stopping workers and API")
    for process, name in reversed(processes):
        _stop(process, name)
    if started_cluster:
        embedded.stop(settings.home)
        print("stopped sfq's private PostgreSQL cluster")
    print("demo finished")
