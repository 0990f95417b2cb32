"""Real worker daemons: results written, failures contained, one process per worker, NOTIFY pickup."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from queue_app import artifact_store
from tests.conftest import insert_request, wait_for_jobs, wait_for_models, wait_until
from workers.daemon.child import TrainingProcess
from workers.daemon.data import load_bars
from workers.modelling import artifacts
from workers.modelling.training import training_end

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}


def test_worker_trains_and_writes_every_result(clean, start_worker):
    worker = start_worker(1)
    model_id, _, _ = insert_request(
        clean,
        {
            "symbol": "AAPL",
            "algorithm": "RandomForest",
            "train_window": 400,
            "test_window": 100,
            "hyperparameters": '{"n_estimators": 20}',
        },
    )
    model = wait_for_models(clean, [model_id])[model_id]
    assert model["status"] == "completed", model["error"]
    metrics = model["metrics"]
    assert {"rmse", "mae", "r2", "directional_accuracy", "ic", "naive_rmse"} <= metrics.keys()
    assert metrics["n_train"] == 400 and metrics["n_test"] == 100
    assert metrics["train_end"] < metrics["test_start"]

    row = clean.execute(
        "SELECT worker_host, worker_pid, attempts, started_at <= finished_at,"
        " jsonb_array_length(fold_metrics), timings ? 'cv' FROM models WHERE id = %s",
        (model_id,),
    ).fetchone()
    assert row[1:] == (worker.pid, 1, True, 5, True) and row[0]

    features = clean.execute(
        "SELECT feature, importance, rank, method FROM features_log WHERE model_id = %s ORDER BY rank",
        (model_id,),
    ).fetchall()
    assert len(features) == 13 and [f[2] for f in features] == list(range(1, 14))
    assert {f[3] for f in features} == {"impurity"} and features[0][1] >= features[-1][1]

    predictions = clean.execute(  # held out: one compact row (0020)
        "SELECT cardinality(s.predicted), s.first_ts,"
        " s.first_ts + make_interval(secs => x.seconds[cardinality(x.seconds)]), s.predicted[1]"
        " FROM model_prediction_series s JOIN prediction_axes x ON x.sha256 = s.axes WHERE s.model_id = %s",
        (model_id,),
    ).fetchone()
    assert predictions[0] == 100 and predictions[2].isoformat().startswith(metrics["test_end"][:10])

    sha, size, fmt, blob = clean.execute(
        "SELECT sha256, size, format, blob FROM model_artifacts WHERE model_id = %s", (model_id,)
    ).fetchone()
    data = artifact_store.read(clean, artifact_store.describe(clean, model_id))
    assert (hashlib.sha256(data).hexdigest(), len(data), fmt, blob) == (sha, size, "skops", sha)
    stored = artifacts.load(data, sha)
    first_prediction = predictions[3]
    assert stored.predict(pd.DataFrame(np.zeros((1, 13)), columns=stored.feature_names_in_)).shape == (1,)
    assert stored.n_features_in_ == 13 and first_prediction is not None

    assert f"model {model_id} starting in process {worker.pid}" in worker.output
    assert f"model {model_id} completed in process {worker.pid}" in worker.output


def test_idle_worker_is_woken_by_notify(clean, start_worker):
    """Test workers poll every 300 s (see conftest), so a prompt start can only come from LISTEN/NOTIFY."""
    start_worker(1)
    # Idle and listening: the database shows a LISTEN on the daemon's listening connection, one for
    # both its workers ("ready" is logged before it). Then past the connector's catch-up wakes (once
    # every channel is listened to, and 1 s after), so that only a NOTIFY can start the job before the
    # next poll.
    deadline = time.monotonic() + 60
    while not clean.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'sfq-worker:1:listen' AND query LIKE 'LISTEN %%'"
    ).fetchone():
        assert time.monotonic() < deadline, "worker 1 is not listening"
        time.sleep(0.05)
    time.sleep(2)
    model_id, _, _ = insert_request(clean, {"symbol": "MSFT", **FAST})
    assert wait_for_models(clean, [model_id], timeout=60)[model_id]["status"] == "completed"


def test_symbol_without_bars_fails_saying_so_and_worker_goes_on(clean, start_worker):
    worker = start_worker(1)
    missing, _, _ = insert_request(clean, {"symbol": "NOSUCH", **FAST})
    good, _, _ = insert_request(clean, {"symbol": "IBM", **FAST})
    finished = wait_for_models(clean, [missing, good])
    assert finished[missing]["status"] == "failed"
    assert "no bars for NOSUCH (1d)" in finished[missing]["error"]
    assert finished[good]["status"] == "completed"
    assert worker.popen.poll() is None
    assert wait_for_jobs(clean) == {missing: "failed", good: "succeeded"}


def test_estimator_error_fails_only_that_model(clean, start_worker):
    start_worker(1)
    # Valid for the contract, refused by scikit-learn at fit time: poisson needs non-negative targets.
    bad, _, _ = insert_request(
        clean,
        {
            "symbol": "AAPL",
            "algorithm": "RandomForest",
            "train_window": 300,
            "test_window": 60,
            "hyperparameters": '{"criterion": "poisson"}',
        },
    )
    good, _, _ = insert_request(clean, {"symbol": "AAPL", **FAST})
    finished = wait_for_models(clean, [bad, good])
    assert finished[bad]["status"] == "failed" and "ValueError" in finished[bad]["error"]
    assert finished[good]["status"] == "completed"


def test_killed_training_process_fails_the_job_and_worker_survives(clean, start_worker):
    worker = start_worker(1)
    slow, _, _ = insert_request(
        clean,
        {
            "symbol": "AAPL",
            "algorithm": "RandomForest",
            "train_window": 1500,
            "test_window": 250,
            "hyperparameters": '{"n_estimators": 2000}',
        },
    )
    child_pid = int(worker.wait_for_line(rf"model {slow} starting .* training process (\d+)").group(1))
    os.kill(child_pid, signal.SIGKILL)
    assert wait_for_models(clean, [slow])[slow] | {"metrics": None} == {
        "id": slow,
        "status": "failed",
        "error": "training process died (signal 9, SIGKILL)",
        "metrics": None,
        "worker_pid": worker.pid,
        "attempts": 1,
    }
    after, _, _ = insert_request(clean, {"symbol": "MSFT", **FAST})
    assert wait_for_models(clean, [after])[after]["status"] == "completed"
    assert worker.popen.poll() is None
    new_child = int(worker.wait_for_line(rf"model {after} starting .* training process (\d+)").group(1))
    assert new_child != child_pid


def test_one_worker_per_core_spreads_jobs(clean, start_worker):
    workers = [start_worker(1), start_worker(2)]
    ids = [
        insert_request(
            clean,
            {
                "symbol": s,
                "algorithm": "RandomForest",
                "train_window": 400 + i,
                "test_window": 60,
                "hyperparameters": '{"n_estimators": 50}',
            },
        )[0]
        for i in range(3)
        for s in ("AAPL", "MSFT")
    ]
    finished = wait_for_models(clean, ids, timeout=180)
    assert {m["status"] for m in finished.values()} == {"completed"}
    assert {m["worker_pid"] for m in finished.values()} == {w.pid for w in workers}


def test_a_job_wakes_one_idle_daemon_alone_on_its_own_channel(clean, database, start_worker):
    """0028: each daemon's workers register asleep with the daemon's own channel; a job notifies one of
    them there, not Procrastinate's channels (which every daemon listens to); a stopping daemon's workers
    are asleep no more."""
    workers = [start_worker(1), start_worker(2)]
    deadline = time.monotonic() + 60
    while len(rows := clean.execute("SELECT queue_name, channel FROM sfq_sleepers").fetchall()) < 8:
        assert time.monotonic() < deadline, f"not every worker asleep: {rows}"
        time.sleep(0.05)
    channels = {channel for _, channel in rows}
    assert len(rows) == 8 and len(channels) == 2  # training + 3 side queues, a daemon's channel each
    with psycopg.connect(database, autocommit=True) as listener:
        for channel in [*channels, "procrastinate_any_queue_v1", "procrastinate_queue_v1#training"]:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        model_id, _, _ = insert_request(clean, {"symbol": "MSFT", **FAST})
        (job_id,) = clean.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()
        assert wait_for_models(clean, [model_id], timeout=60)[model_id]["status"] == "completed"
        notes = [(note.channel, json.loads(note.payload)) for note in listener.notifies(timeout=1)]
    heard = [(channel, payload) for channel, payload in notes if payload["job_id"] == job_id]
    assert len(heard) == 1 and heard[0][0] in channels and heard[0][1]["queue"] == "training", notes
    for worker in workers:
        assert worker.stop() == 0
    assert clean.execute("SELECT count(*) FROM sfq_sleepers").fetchone()[0] == 0


def test_a_job_that_comes_due_while_every_worker_sleeps_starts_without_a_poll(clean, start_worker):
    """A retry's or a scheduled job's time comes with no insert to notify: the fleet's round (a daemon's
    beat, every SFQ_HEARTBEAT_S) wakes a sleeper for it, long before the next poll (300 s in tests). Its
    insert wakes the training worker, which finds it not due yet and sleeps again; the daemon's catch-up
    wakes (LISTEN's start, and 1 s after) are long over when it comes due 10 s later."""
    start_worker(1, SFQ_HEARTBEAT_S="1", SFQ_RESCUE_AFTER_S="5")
    sleeping = "SELECT count(*) FROM sfq_sleepers"
    wait_until(lambda: clean.execute(sleeping).fetchone()[0] == 4, "every worker asleep")
    with clean.transaction():
        model_id, _, _ = insert_request(clean, {"symbol": "MSFT", **FAST})
        clean.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '10 s'"
            " WHERE id = (SELECT job_id FROM models WHERE id = %s)",
            (model_id,),
        )
    assert wait_for_models(clean, [model_id], timeout=120)[model_id]["status"] == "completed"


def test_training_process_is_recycled_after_max_jobs(clean, start_worker):
    worker = start_worker(1, SFQ_MAX_JOBS_PER_CHILD="2")
    ids = [insert_request(clean, {"symbol": "GOOG", **FAST, "train_window": 300 + i})[0] for i in range(3)]
    wait_for_models(clean, ids)
    children = [
        int(worker.wait_for_line(rf"model {i} starting .* training process (\d+)").group(1)) for i in ids
    ]
    assert children[0] == children[1] != children[2]


def test_sigterm_stops_an_idle_worker_cleanly(start_worker):
    worker = start_worker(1)
    assert worker.stop() == 0
    assert "worker 1 stopped" in worker.output


def test_cancelling_a_training_kills_it_and_stays_a_cancellation(clean):
    """Procrastinate aborts a job by cancelling its task: the training process dies and the task sees
    CancelledError, never an error of the waiting thread and the event loop closing the pipe together
    (that race once turned a cancel into a requeue)."""
    model_id, _, _ = insert_request(
        clean,
        {"symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": Jsonb({"n_estimators": 3000})},
    )
    (spec,) = clean.execute("SELECT models.spec FROM models WHERE id = %s", (model_id,)).fetchone()
    bars, context = load_bars(clean, spec, training_end(spec))
    trainer = TrainingProcess(max_jobs=10)

    async def cancel_while_training(delay: float) -> int:
        pid = trainer.ensure_started()
        training = asyncio.ensure_future(trainer.train(spec, bars, context, 60, 0))
        await asyncio.sleep(delay)
        training.cancel()
        with pytest.raises(asyncio.CancelledError):
            await training
        return pid

    def gone(pid: int) -> bool:
        deadline = time.monotonic() + 30  # at once when idle; a loaded machine may take seconds
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)  # killed; its fork server reaps it
        return not os.path.exists(f"/proc/{pid}")

    try:
        for attempt in range(12):
            assert gone(asyncio.run(cancel_while_training(0.05 + 0.02 * attempt)))
    finally:
        trainer.close()
