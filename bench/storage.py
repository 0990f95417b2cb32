"""Bytes per model by table (issue 15): what a model costs in PostgreSQL when it is queued (its request,
its row, its queue job), once a worker has written its result (metrics, importances, predictions, the
link to its file, its default backtest queued) and once that backtest has run, measured as the growth of
each table (pg_total_relation_size: heap, TOAST and indexes; of which indexes: pg_indexes_size, each
table rewritten by VACUUM FULL first, so dead row versions are not counted) over a few hundred models,
divided by their number. The models are real submissions (sfq_submit); their results are
written by the worker's own write (gateway.write_result) with the result of one real training (a
Ridge with the default windows on AAPL), and their backtests run by the worker's own code: the rows are
the sizes a worker writes. Model files are content-addressed, so the file of that one training is stored
once: its cost is reported apart, for a RandomForest (one blob of its size, whatever the models sharing it).
A completed model's bytes are also split in two: its own record, and its results (RESULT_TABLES). Last,
what stays once the job retention has passed (SFQ_JOB_RETENTION_S: the queue's finished jobs and events,
and the accepted requests, are pruned by the workers' own prune; here their times are moved back past it
and the same functions called): the steady state of a database that has run for longer than that.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psycopg

from queue_app import gateway
from queue_app.config import Settings
from workers.daemon import backtests
from workers.daemon.data import load_bars
from workers.modelling import artifacts
from workers.modelling.training import train, training_end

SHORT_MODELS = 20
# A table grows by whole pages, so each relation's figure is off by up to a page over the models measured
# (20 B a relation at 400): SFQ_BENCH_STORAGE_MODELS=2000 to see it smaller, at five times the run's time.
FULL_MODELS = int(os.environ.get("SFQ_BENCH_STORAGE_MODELS", "400"))
SPEC = {"symbol": "AAPL", "algorithm": "Ridge"}  # the default windows: 1000 bars to train, 250 held out
FOREST = {"symbol": "AAPL", "algorithm": "RandomForest"}  # the default forest, for the file's size

SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid), pg_indexes_size(c.oid),
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)
  FROM pg_class c
 WHERE c.relkind = 'r' AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'models'::regclass)
"""


# Every transaction that was running when the writes measured ended: no snapshot may see their dead
# versions any more. Any transaction of the server counts, another database's too (our own snapshot's
# horizon is the oldest transaction running anywhere): another benchmark's long one kept 900 B a model of
# dead versions that VACUUM FULL must copy.
OLDER_ENDED = "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s::text::xid8"
WRITTEN = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"
WAIT_S = 900.0


def _sizes(conn: psycopg.Connection, wait: bool) -> dict[str, tuple[int, int, int]]:
    """What the live rows take (VACUUM FULL: not the dead versions a model's updates leave); without
    `wait` (the short run, not for conclusions), whatever an older transaction keeps too."""
    written = conn.execute(WRITTEN).fetchone()[0]
    deadline = time.monotonic() + WAIT_S
    while wait and not conn.execute(OLDER_ENDED, (written,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a transaction older than xid {written} still runs after {WAIT_S:.0f} s")
        time.sleep(0.2)
    conn.execute("VACUUM FULL")
    return {name: (total, indexes, toast) for name, total, indexes, toast in conn.execute(SIZES).fetchall()}


FILE_TABLES = ("blobs", "blob_chunks")  # per distinct file, not per model: reported apart
# What a completed model's results are, apart from its own record (its models row, request, jobs, attempt
# and file link): its predictions, feature importances and queued default backtest, and its fold metrics
# (a value of its models row: the models table's TOAST, where a completed row's largest value goes; their
# stored size in the row, were they kept there).
RESULT_TABLES = ("model_prediction_series", "prediction_axes", "model_features", "simulation_history")


def _growth(before: dict, after: dict, models: int, tables: tuple[str, ...] | None = None) -> dict:
    """Bytes per model by table (total, of which indexes, of which TOAST), for the tables that grew (of
    `tables`, or but the files' tables)."""
    grown = {}
    for name, sizes in after.items():
        if (name not in tables) if tables else (name in FILE_TABLES):
            continue
        was = before.get(name, (0, 0, 0))
        if sizes[0] != was[0]:
            grown[name] = tuple((now - then) / models for now, then in zip(sizes, was, strict=True))
    return grown


def _results(completed: dict, fold_metrics: float) -> float:
    """Of a model's completion, the bytes of its results (RESULT_TABLES, and its fold metrics: the models
    table's TOAST when they went there, else `fold_metrics`, their stored size in the row)."""
    results = sum(total for name, (total, _, _) in completed.items() if name in RESULT_TABLES)
    return results + (completed.get("models", (0, 0, 0))[2] or fold_metrics)


def _trained(conn: psycopg.Connection, request: dict[str, Any]) -> Any:
    """One real training of `request`, as a worker's training process does it (not stored)."""
    spec = gateway.run(conn, gateway.get_model(gateway.run(conn, gateway.submit(request, "bench")).model_id))
    bars, context = load_bars(conn, spec["spec"], training_end(spec["spec"]))
    return spec["id"], train(spec["spec"], bars, context=context)


def _past_the_retention(conn: psycopg.Connection, ids: list[int], keep: int | None = None) -> None:
    """The models' backtest jobs end as a worker's do, then every job event and request but `keep`'s
    (a model id) is dated past the retention and the workers' prune runs (workers/daemon/runtime.py),
    until nothing is left to prune."""
    conn.execute(
        "SELECT procrastinate_finish_job_v1(j.id, 'succeeded', false) FROM procrastinate_jobs j"
        " JOIN simulation_history s ON s.job_id = j.id WHERE s.model_id = ANY(%s) AND j.status = 'todo'",
        (ids,),
    )
    past = Settings.from_env().job_retention_s + 3600
    conn.execute("UPDATE procrastinate_events SET at = at - make_interval(secs => %s)", (past,))
    conn.execute(
        "UPDATE training_requests SET received_at = received_at - make_interval(secs => %s)"
        " WHERE model_id IS DISTINCT FROM %s",
        (past, keep),
    )
    retention = past - 3600
    for call in (gateway.prune_finished_jobs(retention, 10_000), gateway.prune_requests(retention, 10_000)):
        while gateway.run(conn, call):
            pass


def _anchor(conn: psycopg.Connection, run: int) -> int:
    """A queued model (`run` tells two apart) that stays queued, its job too: its id."""
    request = {**SPEC, "hyperparameters": {"alpha": 0.5}, "run": run}
    return gateway.run(conn, gateway.submit(request, "bench")).model_id


def scenario(url: str, short: bool) -> dict[str, Any]:
    models = SHORT_MODELS if short else FULL_MODELS
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        forest_id, forest = _trained(
            conn, {**FOREST, **({"hyperparameters": {"n_estimators": 10}} if short else {})}
        )
        _, result = _trained(conn, {**SPEC, "horizon": 2})
        conn.execute("SELECT sfq_cancel_model(id) FROM models")  # the two trainings' own: not measured
        # Their jobs, events and requests would be pruned past the retention too, which is not the
        # measured models' saving: pruned first. Then a queued model before the measured ones and one after
        # them (_anchor): no table is ever emptied, so no phase counts a table's first or last pages.
        _past_the_retention(conn, [])
        _anchor(conn, 1)

        phases: dict[str, dict[str, tuple[float, float]]] = {}
        start = _sizes(conn, not short)
        ids = []
        for n in range(models):
            request = {**SPEC, "hyperparameters": {"alpha": 1 + n / 1000}}
            ids.append(gateway.run(conn, gateway.submit(request, "bench")).model_id)
        queued = _sizes(conn, not short)
        phases["queued"] = _growth(start, queued, models)

        for model_id in ids:
            job_id = gateway.run(conn, gateway.get_model(model_id))["job_id"]
            claim = gateway.run(
                conn, gateway.start_model(model_id, job_id, socket.gethostname(), os.getpid())
            )
            gateway.write_result(conn, model_id, claim["attempts"], result, artifacts.FORMAT)
            conn.execute(  # the training job ends as a worker's does
                "SELECT procrastinate_finish_job_v1(%s, 'succeeded', false)", (job_id,)
            )
        completed = _sizes(conn, not short)
        phases["completed (without its file)"] = _growth(queued, completed, models)
        (fold_metrics,) = conn.execute(
            "SELECT avg(pg_column_size(fold_metrics)) FROM models WHERE id = ANY(%s)", (ids,)
        ).fetchone()

        for model_id in ids:
            backtests.run(conn, gateway.run(conn, gateway.default_backtest(model_id))["id"])
        backtested = _sizes(conn, not short)
        phases["its default backtest run"] = _growth(completed, backtested, models)

        last = _anchor(conn, 2)  # its request, the youngest, stays: no table is emptied
        _past_the_retention(conn, ids, keep=last)
        phases["past the job retention"] = _growth(backtested, _sizes(conn, not short), models)

        before_file = _sizes(conn, not short)
        conn.execute("UPDATE models SET status = 'completed' WHERE id = %s", (forest_id,))
        gateway.store_blob(
            conn,
            forest_id,
            gateway.BlobWrite(forest.artifact_sha256, len(forest.artifact), forest.artifact),
            artifacts.FORMAT,
        )
        file_growth = _growth(before_file, _sizes(conn, not short), 1, FILE_TABLES)

    rows = []
    totals = {}
    for phase, grown in phases.items():
        totals[phase] = sum(total for total, _, _ in grown.values())
        for table, (total, indexes, toast) in sorted(grown.items(), key=lambda item: -item[1][0]):
            parts = f"indexes {indexes:.0f}" + (f", TOAST {toast:.0f}" if toast else "")
            rows.append(("storage", f"{phase}: {table}", f"{total:.0f} B/model ({parts})"))
        rows.append(("storage", f"{phase}: all tables", f"{totals[phase]:.0f} B/model"))
    results = _results(phases["completed (without its file)"], float(fold_metrics or 0))
    record = totals["queued"] + totals["completed (without its file)"] - results
    rows.append(
        (
            "storage",
            "a completed model's own record (models but its fold metrics, request, jobs, attempt, file link)",
            f"{record:.0f} B/model",
        )
    )
    rows.append(
        (
            "storage",
            "its results (predictions, features, fold metrics, default backtest queued)",
            f"{results:.0f} B/model",
        )
    )
    whole = totals["queued"] + totals["completed (without its file)"]
    rows.append(("storage", "a completed model, without its file: all its rows", f"{whole:.0f} B/model"))
    whole += totals["its default backtest run"]
    rows.append(("storage", "... with its default backtest run", f"{whole:.0f} B/model"))
    pruned = totals["past the job retention"]
    rows.append(
        (
            "storage",
            "past the job retention: a completed model's own record (its jobs, events and request pruned)",
            f"{record + pruned:.0f} B/model",
        )
    )
    rows.append(
        ("storage", "... all its rows, with its default backtest run", f"{whole + pruned:.0f} B/model")
    )
    file_bytes = sum(total for total, _, _ in file_growth.values())
    rows.append(
        (
            "storage",
            f"model file ({FOREST['algorithm']}, {len(forest.artifact)} bytes), once per distinct file",
            f"{file_bytes:.0f} B",
        )
    )
    return {"rows": rows, "data": {"models": models, "phases": phases, "file": file_growth}}
