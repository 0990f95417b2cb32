"""Live forecasts (POST /models/{id}/predict, and every new bar for an aliased model): load the stored
model safely and predict from the latest bar, as a strategy would, and keep the model's live record (its
forecasts scored and paper-traded: workers/modelling/live.py). Runs in the worker daemon beside training
(see runtime.py), so the API never imports scikit-learn."""

from __future__ import annotations

import logging

import pandas as pd
import psycopg

from queue_app import gateway
from queue_app.errors import SfqError
from workers.daemon import model_files
from workers.daemon.data import frame, load_bars
from workers.modelling.live import track_record
from workers.modelling.training import forecast

log = logging.getLogger("sfq.forecast")


def run(conn: psycopg.Connection, forecast_id: int) -> None:
    """Answer one queued forecast on `conn` (autocommit). The database's errors are the job's (it fails,
    and asking again re-queues it); the forecast's own are its answer."""
    job = gateway.run(conn, gateway.forecast_inputs(forecast_id))
    if job is None:  # already answered, or its model was deleted
        return
    bars, context = load_bars(conn, job["spec"], job["as_of"])
    try:
        model = model_files.load(conn, job["model_id"], job["spec"])
        result = forecast(job["spec"], model, bars, context)
    except Exception as error:  # TrainingError, ArtifactError, an estimator's error: the answer
        reason = str(error) if isinstance(error, SfqError) else repr(error)  # sfq's own say what is wrong
        gateway.run(conn, gateway.fail_forecast(forecast_id, reason))
        log.warning("forecast %s for model %s failed: %s", forecast_id, job["model_id"], error)
        return
    gateway.run(conn, gateway.complete_forecast(forecast_id, result))
    try:
        refresh_record(conn, job["model_id"])
    except (SfqError, ValueError) as error:  # the forecast stands; the record waits for the next one
        log.warning("live record of model %s not updated: %s", job["model_id"], error)
    log.info(
        "forecast %s for model %s as of %s: %.6g",
        forecast_id,
        job["model_id"],
        job["as_of"],
        result["prediction"],
    )


def refresh_record(conn: psycopg.Connection, model_id: int) -> None:
    """Recompute a model's live record from its answered forecasts and the bars since the first one
    (after each of its forecasts: the bars that brought it also realised the earlier ones), with its
    decay flag against the model's default backtest as completed by then."""
    inputs = gateway.run(conn, gateway.live_record_inputs(model_id))
    rows = gateway.run(conn, gateway.model_live_forecasts(model_id))
    if inputs is None or not rows:
        return
    spec = inputs["spec"]
    answered = pd.DataFrame(rows).set_index("as_of").astype(float)
    bars = frame(
        gateway.run(
            conn, gateway.simulation_bars(spec["symbol"], spec["timeframe"], rows[0]["as_of"], "infinity")
        )
    )
    backtest = gateway.run(conn, gateway.default_backtest(model_id))
    tested = backtest["metrics"] if backtest and backtest["status"] == "completed" else None
    record = track_record(spec, answered, bars, inputs["calendar"], tested)
    gateway.run(conn, gateway.save_live_record(model_id, record))
