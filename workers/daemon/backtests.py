"""Backtests of trained models (the `simulate_model` task): the model's out-of-sample predictions and the
bars of that window (never a lockbox's) through a strategy (workers/modelling/backtest.py), or, for its
lockbox evaluation, the stored model's predictions over the lockbox, written to simulation_history (a
backtest is stored as a "simulation": its id is a simulation's)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import psycopg
from opentelemetry.trace import Span

from queue_app import gateway, tracing
from queue_app.errors import SfqError, Unavailable
from queue_app.vocabulary import SIMULATION_QUEUE
from workers.daemon import forecasts, model_files
from workers.daemon.data import frame, load_bars
from workers.modelling.backtest import DEFAULT_STRATEGY, BacktestError, backtest, periods_per_year
from workers.modelling.training import before_lockbox, lockbox_predictions, lockbox_scores

log = logging.getLogger("sfq.backtest")


def run(conn: psycopg.Connection, simulation_id: int) -> None:
    """Run one queued backtest on `conn` (autocommit), in its model's trace (queue_app.tracing). The
    database's errors are the job's (it fails, and asking again re-queues it); the backtest's own are
    recorded as its outcome."""
    job = gateway.run(conn, gateway.simulation_inputs(simulation_id))
    if job is None:  # already done, or its model was deleted
        return
    traced = {
        "sfq.model.id": job["model_id"],
        "sfq.model.fingerprint": job["fingerprint"],
        "sfq.model.algorithm": job["spec"]["algorithm"],
        "sfq.simulation.id": simulation_id,
        "sfq.strategy": job["strategy"],
        "sfq.lockbox": job["lockbox"],
    }
    with tracing.processing(SIMULATION_QUEUE, job["traceparent"], job["job_id"], traced) as span:
        _run(conn, simulation_id, job, span)


def _run(conn: psycopg.Connection, simulation_id: int, job: dict[str, Any], span: Span) -> None:
    spec, model_id = job["spec"], job["model_id"]
    try:
        predictions, bars, extra = (_lockbox if job["lockbox"] else _out_of_sample)(conn, job)
        with tracing.step("backtest", **{"sfq.bars": len(bars)}):
            result = backtest(predictions, bars, spec, job["strategy"], job["params"], job["calendar"])
    except Unavailable:  # the database away: the job's (it is retried), not the backtest's outcome
        raise
    except Exception as error:  # BacktestError (too few bars, ...), TrainingError, or a bug: recorded
        reason = str(error) if isinstance(error, SfqError) else repr(error)  # sfq's own say what is wrong
        _fail(conn, simulation_id, model_id, reason)
        tracing.failed(span, reason)
        return
    # With its annualisation factor: the deflated Sharpe ratio needs per-bar Sharpe ratios.
    per_year = periods_per_year(spec["timeframe"], job["calendar"])
    metrics = {**result.metrics, "periods_per_year": per_year, "calendar": job["calendar"], **extra}
    with tracing.step("store results", **{"sfq.simulation.id": simulation_id}):
        gateway.run(
            conn,
            gateway.complete_simulation(
                simulation_id, metrics, result.equity_curve, result.period_start, result.period_end
            ),
        )
    if job["strategy"] == DEFAULT_STRATEGY and not job["lockbox"]:
        _judge_live_record(conn, model_id)
    log.info(
        "simulation %s of model %s (%s): sharpe %s",
        simulation_id,
        model_id,
        job["strategy"],
        result.metrics.get("sharpe"),
    )


def _judge_live_record(conn: psycopg.Connection, model_id: int) -> None:
    """A model already forecasting live (an alias points at it) whose default backtest completes after
    its live record: the record's decay flag is taken again now, not at the next bar."""
    if gateway.run(conn, gateway.live_record_counts(model_id)) is None:
        return
    try:
        forecasts.refresh_record(conn, model_id)
    except (SfqError, ValueError) as error:  # the backtest stands; the record waits for the next forecast
        log.warning("live record of model %s not updated: %s", model_id, error)


def _out_of_sample(conn: psycopg.Connection, job: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The model's stored out-of-sample predictions and the bars they trade on, before any lockbox."""
    spec, model_id = job["spec"], job["model_id"]
    predictions = pd.DataFrame(
        gateway.run(conn, gateway.model_predictions(model_id)), columns=["ts", "predicted", "actual"]
    ).set_index("ts")[["predicted"]]
    if predictions.empty:
        raise BacktestError(f"model {model_id} has no held-out predictions")
    window = gateway.simulation_bars(spec["symbol"], spec["timeframe"], predictions.index[0], job["data_end"])
    return predictions, before_lockbox(frame(gateway.run(conn, window)), spec), {}


def _lockbox(conn: psycopg.Connection, job: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The stored model's predictions over its lockbox, the bars up to data_end, and their scores."""
    spec = job["spec"]
    bars, context = load_bars(conn, spec, job["data_end"], everything=True)
    model = model_files.load(conn, job["model_id"], spec)
    predictions = lockbox_predictions(spec, model, bars, context)
    return predictions[["predicted"]], bars, {"lockbox": lockbox_scores(spec, predictions, bars)}


def _fail(conn: psycopg.Connection, simulation_id: int, model_id: int, reason: str) -> None:
    gateway.run(conn, gateway.fail_simulation(simulation_id, reason))
    log.warning("simulation %s of model %s failed: %s", simulation_id, model_id, reason)
