"""Scenario 4: per-job cost. The standard mix run by sfq with 1 worker (the models' `timings`: features,
cv, fit, evaluate, importance, serialize; and sfq's started_at -> finished_at), and again by the
baseline runner with one process, which times the database load, the result write and the default
backtest around `workers.modelling.training.train`. Overhead = everything that is not CV or fitting, as
a share of the job."""

from __future__ import annotations

from typing import Any

from bench import jobs
from bench.scaleout import run_pool, run_sfq
from queue_app import gateway
from queue_app.vocabulary import TRAINING_PHASES

BASELINE_PHASES = ("load", "train", "write", "backtest")


def scenario(url: str, short: bool) -> dict[str, Any]:
    mix = jobs.standard_mix(short)
    sfq = run_sfq(url, mix, 1, 1, 120 if short else 1800)
    base = run_pool(url, mix, 2, "process", 120 if short else 1800, workers=1)
    with gateway.connect(url, "sfq-bench") as conn:
        rows = [
            (row["id"], row["timings"], row["seconds"])
            for row in gateway.run(conn, gateway.model_timings(sfq["ids"]))
        ]
    out = []
    total_cv_fit = 0.0
    for (model_id, timings, span), base_id, request in zip(rows, base["ids"], mix, strict=True):
        times = base["times"][str(base_id)]
        # sfq's claim -> result write starts, plus the write and the backtest (timed in the baseline)
        job = span + times["write"] + times["backtest"]
        total_cv_fit += timings["cv"] + timings["fit"]
        other = job - sum(timings.values()) - sum(times[k] for k in ("load", "write", "backtest"))
        parts = [f"{name} {100 * timings[name] / job:.1f}%" for name in TRAINING_PHASES]
        parts += [f"{k} {100 * times[k] / job:.1f}%" for k in ("load", "write", "backtest")]
        parts.append(f"other {100 * other / job:.1f}%")
        overhead = 1 - (timings["cv"] + timings["fit"]) / job
        label = f"{request['algorithm']} {request['symbol']} h{request.get('horizon', 1)}"
        out.append(
            (
                "per-job cost",
                f"model {model_id} {label}: {job:.2f} s",
                f"overhead {100 * overhead:.1f}%; " + ", ".join(parts),
            )
        )
    whole = 1 - total_cv_fit / sfq["wall"]
    base_wall = sum(sum(t[k] for k in BASELINE_PHASES) for t in base["times"].values())
    base_cv_fit = sum(t["phase_cv"] + t["phase_fit"] for t in base["times"].values())
    out.append(
        (
            "per-job cost",
            "whole mix, sfq 1 worker: 1 − Σ(cv + fit) / wall (everything included)",
            f"{100 * whole:.1f}% of {sfq['wall']:.2f} s",
        )
    )
    out.append(
        (
            "per-job cost",
            "whole mix, baseline in 1 process: 1 − Σ(cv + fit) / Σ(load + train + write + backtest)",
            f"{100 * (1 - base_cv_fit / base_wall):.1f}% of {base_wall:.2f} s",
        )
    )
    return {"rows": out, "data": {"overhead": whole, "baseline_overhead": 1 - base_cv_fit / base_wall}}
