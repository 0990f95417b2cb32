"""The standard mix of training jobs, and the job function every baseline calls: the same work as sfq's
worker (claim the model, load its bars from PostgreSQL, `workers.modelling.training.train`, write every
result in one transaction with sfq's own queries, run the model's default backtest), timed phase by phase."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from queue_app.db import QUERIES
from workers.daemon import backtests
from workers.daemon.data import load_bars
from workers.modelling import artifacts
from workers.modelling.training import train

SYMBOLS = ("AAPL", "MSFT", "IBM")


def standard_mix(short: bool) -> list[dict[str, Any]]:
    """16 real training jobs over AAPL, MSFT and IBM (short: 4 tiny ones)."""
    if short:
        small = {"train_window": 300, "test_window": 60, "cv_folds": 2}
        return [
            {"symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": {"n_estimators": 5}, **small},
            {"symbol": "MSFT", "algorithm": "Ridge", **small},
            {"symbol": "IBM", "algorithm": "ElasticNet", "alpha_grid": [0.001, 0.01], **small},
            {
                "symbol": "AAPL",
                "algorithm": "HistGradientBoosting",
                "hyperparameters": {"max_iter": 5},
                **small,
            },
        ]
    mix = []
    for symbol in SYMBOLS:
        for horizon in (1, 5):
            mix.append(
                {
                    "symbol": symbol,
                    "algorithm": "RandomForest",
                    "horizon": horizon,
                    "hyperparameters": {"n_estimators": 100, "min_samples_leaf": 20},
                }
            )
        for horizon in (1, 5):
            mix.append({"symbol": symbol, "algorithm": "HistGradientBoosting", "horizon": horizon})
        mix.append({"symbol": symbol, "algorithm": "ElasticNet", "alpha_grid": [0.0001, 0.001, 0.01, 0.1]})
    mix.append(
        {
            "symbol": "AAPL",
            "algorithm": "ElasticNet",
            "alpha_grid": [0.0001, 0.001, 0.01],
            "l1_ratio_grid": [0.2, 0.5, 0.8],
        }
    )
    assert len(mix) == 16
    return mix


def submit(url: str, mix: list[dict[str, Any]], run: int = 1) -> list[int]:
    """Enqueue the mix in one transaction (run > 1 makes each spec a new model of the same work);
    returns the model ids. Their Procrastinate jobs are deferred too (idle unless an sfq worker runs)."""
    with psycopg.connect(url) as conn:
        ids = []
        for request in mix:
            body = {**request, **({"run": run} if run > 1 else {})}
            row = conn.execute(QUERIES["submit"], {"request": json.dumps(body), "via": "bench"}).fetchone()
            if row[2]:
                raise RuntimeError(f"bench request deduplicated: {body}")
            ids.append(row[0])
    return ids


_local = threading.local()  # one connection per process, or per thread in the ThreadPoolExecutor baseline


def _db(url: str) -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(url, autocommit=True, application_name="sfq-bench-baseline")
    return conn


def run_job(url: str, model_id: int) -> dict[str, float]:
    """Claim, load, train, write, backtest: what an sfq worker does for one model, minus the process
    isolation and progress updates. Returns seconds per phase (load, train, write, backtest)."""
    times: dict[str, float] = {}
    clock = time.perf_counter()
    db = _db(url)
    (job_id,) = db.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()
    attempt, spec, _timeout = db.execute(
        QUERIES["start_model"],
        {"model_id": model_id, "host": socket.gethostname(), "pid": os.getpid(), "job_id": job_id},
    ).fetchone()
    bars, context = load_bars(db, spec, spec["data_end"])
    now = time.perf_counter()
    times["load"], clock = now - clock, now
    result = train(spec, bars, context=context)
    now = time.perf_counter()
    times["train"], clock = now - clock, now
    with db.transaction():
        db.execute(
            QUERIES["complete_model"],
            {
                "model_id": model_id,
                "attempt": attempt,
                "metrics": Jsonb(result.metrics),
                "fold_metrics": Jsonb(result.fold_metrics),
                "timings": Jsonb(result.timings),
            },
        )
        ((simulation_id,),) = db.execute(QUERIES["request_default_simulation"], {"model_id": model_id})
        with db.cursor() as cursor:
            cursor.executemany(
                QUERIES["insert_feature_importance"],
                [{"model_id": model_id, **r} for r in result.importances],
            )
            cursor.executemany(
                QUERIES["insert_prediction"], [{"model_id": model_id, **r} for r in result.predictions]
            )
            cursor.execute(
                QUERIES["insert_artifact"],
                {
                    "model_id": model_id,
                    "format": artifacts.FORMAT,
                    "sha256": result.artifact_sha256,
                    "size": len(result.artifact),
                    "bytes": result.artifact,
                },
            )
    now = time.perf_counter()
    times["write"], clock = now - clock, now
    backtests.run(db, simulation_id)  # as sfq's simulate_model task does (its job stays idle here)
    times["backtest"] = time.perf_counter() - clock
    times.update({f"phase_{name}": value for name, value in result.timings.items()})
    return times


def warm(_: int = 0) -> int:
    """Run in each pool worker before timing starts (imports done, process up)."""
    return os.getpid()
