"""The standard mix of training jobs, and the job function every baseline calls: the same work as sfq's
worker (claim the model, load its bars from PostgreSQL, `workers.modelling.training.train`, write every
result in one transaction with sfq's own queries, run the model's default backtest), timed phase by phase."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import psycopg

from queue_app import gateway
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
    with gateway.connect(url, "sfq-bench") as conn:  # committed when the block ends
        ids = []
        for request in mix:
            body = {**request, **({"run": run} if run > 1 else {})}
            submitted = gateway.run(conn, gateway.submit(body, "bench"))
            if submitted.deduplicated:
                raise RuntimeError(f"bench request deduplicated: {body}")
            ids.append(submitted.model_id)
    return ids


_local = threading.local()  # one connection per process, or per thread in the ThreadPoolExecutor baseline


def _db(url: str) -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = gateway.connect(url, "sfq-bench-baseline", autocommit=True)
    return conn


def run_job(url: str, model_id: int) -> dict[str, float]:
    """Claim, load, train, write, backtest: what an sfq worker does for one model, minus the process
    isolation and progress updates. Returns seconds per phase (load, train, write, backtest)."""
    times: dict[str, float] = {}
    clock = time.perf_counter()
    db = _db(url)
    job_id = gateway.run(db, gateway.get_model(model_id))["job_id"]
    claim = gateway.run(db, gateway.start_model(model_id, job_id, socket.gethostname(), os.getpid()))
    attempt, spec = claim["attempts"], claim["spec"]
    bars, context = load_bars(db, spec, spec["data_end"])
    now = time.perf_counter()
    times["load"], clock = now - clock, now
    result = train(spec, bars, context=context)
    now = time.perf_counter()
    times["train"], clock = now - clock, now
    gateway.write_result(db, model_id, attempt, result, artifacts.FORMAT)
    now = time.perf_counter()
    times["write"] = now - clock
    simulation_id = gateway.run(db, gateway.default_backtest(model_id))["id"]  # deferred by the write
    clock = time.perf_counter()
    backtests.run(db, simulation_id)  # as sfq's simulate_model task does (its job stays idle here)
    times["backtest"] = time.perf_counter() - clock
    times.update({f"phase_{name}": value for name, value in result.timings.items()})
    return times


def warm(_: int = 0) -> int:
    """Run in each pool worker before timing starts (imports done, process up)."""
    return os.getpid()
