"""Live forecasts (POST /models/{id}/predict): load the stored model safely and predict from the latest
bar, as a strategy would. Runs in the worker daemon beside training (see worker.py), so the API never
imports scikit-learn."""

from __future__ import annotations

import logging

import psycopg
from psycopg.rows import dict_row

from queue_app.db import QUERIES
from workers.daemon.data import load_bars
from workers.modelling import artifacts
from workers.modelling.training import TrainingError, forecast

log = logging.getLogger("sfq.forecast")


def run(conn: psycopg.Connection, forecast_id: int) -> None:
    """Answer one queued forecast on `conn` (autocommit)."""
    with conn.cursor(row_factory=dict_row) as db:
        job = db.execute(QUERIES["forecast_inputs"], {"forecast_id": forecast_id}).fetchone()
        if job is None:  # already answered, or its model was deleted
            return
        try:
            model = artifacts.load(job["artifact"], job["sha256"])
            bars, context = load_bars(conn, job["spec"], job["as_of"])
            result = forecast(job["spec"], model, bars, context)
        except psycopg.Error:
            raise  # the database, not the forecast: the job fails and asking again re-queues it
        except Exception as error:  # TrainingError, ArtifactError, an estimator's error: the answer
            reason = str(error) if isinstance(error, TrainingError | artifacts.ArtifactError) else repr(error)
            db.execute(QUERIES["fail_forecast"], {"forecast_id": forecast_id, "error": reason})
            log.warning("forecast %s for model %s failed: %s", forecast_id, job["model_id"], error)
            return
        db.execute(QUERIES["complete_forecast"], {"forecast_id": forecast_id, **result})
        log.info(
            "forecast %s for model %s as of %s: %.6g",
            forecast_id,
            job["model_id"],
            job["as_of"],
            result["prediction"],
        )
