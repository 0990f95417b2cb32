"""Live forecasts (POST /models/{id}/predict): load the stored model safely and predict from the latest
bar, as a strategy would. Runs in the worker daemon beside training (see runtime.py), so the API never
imports scikit-learn."""

from __future__ import annotations

import logging

import psycopg

from queue_app import gateway
from queue_app.errors import SfqError
from workers.daemon.data import load_bars
from workers.modelling import artifacts
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
        model = artifacts.load(job["artifact"], job["sha256"])
        result = forecast(job["spec"], model, bars, context)
    except Exception as error:  # TrainingError, ArtifactError, an estimator's error: the answer
        reason = str(error) if isinstance(error, SfqError) else repr(error)  # sfq's own say what is wrong
        gateway.run(conn, gateway.fail_forecast(forecast_id, reason))
        log.warning("forecast %s for model %s failed: %s", forecast_id, job["model_id"], error)
        return
    gateway.run(conn, gateway.complete_forecast(forecast_id, result))
    log.info(
        "forecast %s for model %s as of %s: %.6g",
        forecast_id,
        job["model_id"],
        job["as_of"],
        result["prediction"],
    )
