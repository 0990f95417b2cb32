"""Backtests of trained models (the `simulate_model` task): the model's held-out predictions and the
bars of that window through a strategy (workers/modelling/simulation.py), written to simulation_history."""

from __future__ import annotations

import logging

import pandas as pd
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from queue_app.db import QUERIES
from workers.daemon.data import COLUMNS
from workers.modelling.simulation import SimulationError, periods_per_year, simulate

log = logging.getLogger("sfq.backtest")


def run(conn: psycopg.Connection, simulation_id: int) -> None:
    """Backtest one queued simulation on `conn` (autocommit)."""
    with conn.cursor(row_factory=dict_row) as db:
        job = db.execute(QUERIES["simulation_inputs"], {"simulation_id": simulation_id}).fetchone()
        if job is None:  # already done, or its model was deleted
            return
        spec = job["spec"]
        predictions = pd.DataFrame(
            db.execute(QUERIES["model_predictions"], {"model_id": job["model_id"]}).fetchall(),
            columns=["ts", "predicted", "actual"],
        ).set_index("ts")[["predicted"]]
        try:
            if predictions.empty:
                raise SimulationError(f"model {job['model_id']} has no held-out predictions")
            bars = pd.DataFrame(
                db.execute(
                    QUERIES["simulation_bars"],
                    {
                        "symbol": spec["symbol"],
                        "timeframe": spec["timeframe"],
                        "start": predictions.index[0],
                        "data_end": job["data_end"],
                    },
                ).fetchall(),
                columns=COLUMNS,
            ).set_index("ts")
            result = simulate(predictions, bars, spec, job["strategy"], job["params"])
        except psycopg.Error:
            raise  # the database, not the backtest: the job fails, asking again re-queues it
        except Exception as error:  # SimulationError (too few bars, ...) or a bug: recorded, not lost
            reason = str(error) if isinstance(error, SimulationError) else repr(error)
            db.execute(QUERIES["fail_simulation"], {"simulation_id": simulation_id, "error": reason})
            log.warning("simulation %s of model %s failed: %s", simulation_id, job["model_id"], reason)
            return
        db.execute(
            QUERIES["complete_simulation"],
            {
                "simulation_id": simulation_id,
                # With its annualisation factor: the deflated Sharpe ratio needs per-bar Sharpe ratios.
                "metrics": Jsonb({**result.metrics, "periods_per_year": periods_per_year(spec["timeframe"])}),
                "equity_curve": Jsonb(result.equity_curve),
                "period_start": result.period_start,
                "period_end": result.period_end,
            },
        )
        log.info(
            "simulation %s of model %s (%s): sharpe %s",
            simulation_id,
            job["model_id"],
            job["strategy"],
            result.metrics.get("sharpe"),
        )
