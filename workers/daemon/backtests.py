"""Backtests of trained models (the `simulate_model` task): the model's held-out predictions and the
bars of that window through a strategy (workers/modelling/backtest.py), written to simulation_history
(a backtest is stored as a "simulation": its id is a simulation's)."""

from __future__ import annotations

import logging

import pandas as pd
import psycopg

from queue_app import gateway
from queue_app.errors import SfqError
from workers.daemon.data import frame
from workers.modelling.backtest import backtest, periods_per_year

log = logging.getLogger("sfq.backtest")


def run(conn: psycopg.Connection, simulation_id: int) -> None:
    """Run one queued backtest on `conn` (autocommit). The database's errors are the job's (it
    fails, and asking again re-queues it); the backtest's own are recorded as its outcome."""
    job = gateway.run(conn, gateway.simulation_inputs(simulation_id))
    if job is None:  # already done, or its model was deleted
        return
    spec, model_id = job["spec"], job["model_id"]
    predictions = pd.DataFrame(
        gateway.run(conn, gateway.model_predictions(model_id)), columns=["ts", "predicted", "actual"]
    ).set_index("ts")[["predicted"]]
    if predictions.empty:
        _fail(conn, simulation_id, model_id, f"model {model_id} has no held-out predictions")
        return
    window = gateway.simulation_bars(spec["symbol"], spec["timeframe"], predictions.index[0], job["data_end"])
    bars = frame(gateway.run(conn, window))
    try:
        result = backtest(predictions, bars, spec, job["strategy"], job["params"])
    except Exception as error:  # BacktestError (too few bars, ...) or a bug: recorded, not lost
        reason = str(error) if isinstance(error, SfqError) else repr(error)  # sfq's own say what is wrong
        _fail(conn, simulation_id, model_id, reason)
        return
    # With its annualisation factor: the deflated Sharpe ratio needs per-bar Sharpe ratios.
    metrics = {**result.metrics, "periods_per_year": periods_per_year(spec["timeframe"])}
    gateway.run(
        conn,
        gateway.complete_simulation(
            simulation_id, metrics, result.equity_curve, result.period_start, result.period_end
        ),
    )
    log.info(
        "simulation %s of model %s (%s): sharpe %s",
        simulation_id,
        model_id,
        job["strategy"],
        result.metrics.get("sharpe"),
    )


def _fail(conn: psycopg.Connection, simulation_id: int, model_id: int, reason: str) -> None:
    gateway.run(conn, gateway.fail_simulation(simulation_id, reason))
    log.warning("simulation %s of model %s failed: %s", simulation_id, model_id, reason)
