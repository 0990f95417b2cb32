"""The old service's operations over HTTP and their CLI twins, against a real API, real workers and the
run's database: batch, retrain, evolution chains and lineage, cancel, features, predictions, artifact,
live predict."""

from __future__ import annotations

import hashlib
import json
import time

import psycopg
import pytest

from tests.conftest import insert_request, run_sfq, wait_for_jobs, wait_for_models
from workers.modelling import artifacts

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}


def latest_bar(conn, symbol: str):
    return conn.execute(
        "SELECT max(ts) FROM bars WHERE symbol = %s AND timeframe = '1d'", (symbol,)
    ).fetchone()[0]


def test_batch_enqueues_one_model_per_target_in_one_go_and_deduplicates(clean, api, database):
    first = api.post("/train/batch", json={"symbol": "AAPL", **FAST})
    assert first.status_code == 201, first.text
    body = first.json()
    assert [m["target_col"] for m in body["models"]] == ["open", "close", "high", "low"]
    assert body["model_ids"] == [m["model_id"] for m in body["models"]]
    rows = clean.execute("SELECT id, target_col, job_id IS NOT NULL FROM models ORDER BY id").fetchall()
    assert [(r[1], r[2]) for r in rows] == [("open", True), ("close", True), ("high", True), ("low", True)]
    assert len({m["fingerprint"] for m in body["models"]}) == 4

    again = api.post("/train/batch", json={"symbol": "AAPL", **FAST})
    assert again.status_code == 200
    assert all(m["deduplicated"] for m in again.json()["models"])
    assert again.json()["model_ids"] == body["model_ids"]

    # A single /train of one of the four targets is the same model.
    single = api.post("/train", json={"symbol": "AAPL", "target_col": "high", **FAST}).json()
    assert single["deduplicated"] and single["model_id"] == body["model_ids"][2]

    refused = api.post("/train/batch", json={"symbol": "AAPL", "target_col": "close"})
    assert refused.status_code == 422 and refused.json()["detail"]["field"] == "target_col"
    bad = api.post("/train/batch", json={"symbol": "AAPL", "horizon": 0})
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "horizon"
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == 4  # nothing half-enqueued

    cli = run_sfq("batch", "--symbol", "MSFT", "--algorithm", "Ridge", "--train-window", "300", url=database)
    assert cli.returncode == 0, cli.stderr
    assert [line.split()[2] for line in cli.stdout.splitlines()] == ["open", "close", "high", "low"]


def test_retrain_moves_data_end_to_the_latest_bar_and_links_the_models(clean, api, database):
    old = api.post("/train", json={"symbol": "AAPL", "data_end": "2012-06-01T00:00:00Z", **FAST}).json()
    latest = latest_bar(clean, "AAPL")

    retrained = api.post(f"/retrain/{old['model_id']}")
    assert retrained.status_code == 201, retrained.text
    new_id = retrained.json()["model_id"]
    row = clean.execute(
        "SELECT data_end, retrain_of, run,"
        " m.spec - 'data_end' = (SELECT o.spec - 'data_end' FROM models o WHERE o.id = %s)"
        " FROM models m WHERE id = %s",
        (old["model_id"], new_id),
    ).fetchone()
    assert row == (latest, old["model_id"], 1, True)

    # No new bars since: the answer is the existing model, unless forced.
    same = api.post(f"/retrain/{new_id}", json={})
    assert same.status_code == 200 and same.json()["model_id"] == new_id and same.json()["deduplicated"]
    forced = api.post(f"/retrain/{new_id}", json={"force": True})
    assert forced.status_code == 201
    again = api.post(f"/retrain/{new_id}", json={"force": True})
    assert again.status_code == 201
    runs = clean.execute(
        "SELECT run, fingerprint FROM models WHERE id = ANY(%s) ORDER BY run",
        ([new_id, forced.json()["model_id"], again.json()["model_id"]],),
    ).fetchall()
    assert [r[0] for r in runs] == [1, 2, 3] and len({r[1] for r in runs}) == 3

    # A new bar arrives: a plain retrain is a new model on it.
    clean.execute(
        "INSERT INTO bars SELECT symbol, timeframe, ts + interval '1 day', open, high, low, close, volume"
        " FROM bars WHERE symbol = 'AAPL' AND timeframe = '1d' AND ts = %s",
        (latest,),
    )
    try:
        fresh = api.post(f"/retrain/{new_id}")
        assert fresh.status_code == 201
        assert clean.execute(
            "SELECT data_end > %s FROM models WHERE id = %s", (latest, fresh.json()["model_id"])
        ).fetchone()[0]
    finally:
        clean.execute("DELETE FROM bars WHERE symbol = 'AAPL' AND ts > %s", (latest,))

    assert api.post("/retrain/999999").status_code == 404
    bad = api.post(f"/retrain/{new_id}", json={"force": "yes"})
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "force"
    assert api.post(f"/retrain/{new_id}", json={"forse": True}).json()["detail"]["field"] == "forse"

    cli = run_sfq("retrain", str(new_id), "--force", url=database)
    assert cli.returncode == 0 and "fingerprint" in cli.stdout, cli.stderr
    cli = run_sfq("retrain", "999999", url=database)
    assert cli.returncode == 1 and cli.stderr.strip() == "sfq: no model with id 999999"


def test_evolution_chain_merges_overrides_and_lineage_shows_changes_and_metric_moves(
    clean, api, database, start_worker
):
    start_worker(1)
    parent = api.post("/train", json={"symbol": "AAPL", **FAST, "hyperparameters": {"alpha": 10.0}}).json()
    child = api.post(
        "/api/train_with_parent",
        json={
            "parent_model_id": parent["model_id"],
            "overrides": {"hyperparameters": {"alpha": 0.01}, "horizon": 2},
        },
    )
    assert child.status_code == 201, child.text
    child_id = child.json()["model_id"]
    cli = run_sfq("evolve", str(child_id), "--features", "ret_1,ret_5,vol_20", url=database)
    assert cli.returncode == 0, cli.stderr
    grandchild_id = int(cli.stdout.split()[1])

    rows = clean.execute("SELECT id, m.spec, parent_model_id FROM models m").fetchall()
    specs = {r[0]: (r[1], r[2]) for r in rows}
    parent_spec, child_spec = specs[parent["model_id"]][0], specs[child_id][0]
    assert specs[child_id][1] == parent["model_id"] and specs[grandchild_id][1] == child_id
    assert child_spec["hyperparameters"] == {**parent_spec["hyperparameters"], "alpha": 0.01}
    assert child_spec["horizon"] == 2
    assert {k: v for k, v in child_spec.items() if k not in ("hyperparameters", "horizon")} == {
        k: v for k, v in parent_spec.items() if k not in ("hyperparameters", "horizon")
    }
    assert specs[grandchild_id][0]["features"] == ["ret_1", "ret_5", "vol_20"]

    models = wait_for_models(clean, [parent["model_id"], child_id, grandchild_id])
    assert all(m["status"] == "completed" for m in models.values()), models

    chain = api.get(f"/models/{child_id}/lineage").json()
    assert [m["id"] for m in chain["models"]] == [parent["model_id"], child_id, grandchild_id]
    assert chain["root"] == parent["model_id"] and [m["depth"] for m in chain["models"]] == [-1, 0, 1]
    root, middle, leaf = chain["models"]
    assert root["changes"] is None
    assert middle["changes"] == {
        "hyperparameters.alpha": {"from": 10.0, "to": 0.01},
        "horizon": {"from": 1, "to": 2},
    }
    assert set(leaf["changes"]) == {"features"}
    expected = models[child_id]["metrics"]["r2"] - models[parent["model_id"]]["metrics"]["r2"]
    assert middle["metric_changes"]["r2"]["change"] == pytest.approx(expected)
    # From the leaf the whole chain is there too.
    assert [m["id"] for m in api.get(f"/models/{grandchild_id}/lineage").json()["models"]] == [
        parent["model_id"],
        child_id,
        grandchild_id,
    ]
    text = run_sfq("lineage", str(child_id), url=database)
    assert text.returncode == 0 and "hyperparameters.alpha: 10.0 -> 0.01" in text.stdout, text.stderr

    # A new algorithm starts from its own defaults; bad overrides are refused naming the field.
    switched = api.post(
        "/api/train_with_parent",
        json={"parent_model_id": parent["model_id"], "overrides": {"algorithm": "Lasso"}},
    ).json()
    assert (
        clean.execute(
            "SELECT hyperparameters->>'alpha' FROM models WHERE id = %s", (switched["model_id"],)
        ).fetchone()[0]
        == "1.0"
    )
    for body, field in (
        ({"parent_model_id": parent["model_id"], "overrides": {"horizon": 0}}, "horizon"),
        ({"parent_model_id": parent["model_id"], "overrides": {"lookback": 3}}, "lookback"),
        (
            {"parent_model_id": parent["model_id"], "overrides": {"hyperparameters": {"max_depth": 3}}},
            "hyperparameters.max_depth",
        ),
        ({"parent_model_id": 999999, "overrides": {}}, "parent_model_id"),
        ({"parent_model_id": "1"}, "parent_model_id"),
        ({"parent_model_id": parent["model_id"], "overrides": []}, "overrides"),
        ({"parent_model_id": parent["model_id"], "overrides": {"run": 3}}, "overrides"),
    ):
        refused = api.post("/api/train_with_parent", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["detail"]["field"] == field, refused.json()
    assert api.get("/models/999999/lineage").status_code == 404


def test_cancel_a_queued_model_it_never_runs(clean, api, database, start_worker):
    queued = api.post("/train", json={"symbol": "AAPL", **FAST}).json()
    cancelled = api.post(f"/models/{queued['model_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    job = clean.execute(
        "SELECT j.status::text FROM procrastinate_jobs j JOIN models m ON m.job_id = j.id WHERE m.id = %s",
        (queued["model_id"],),
    ).fetchone()[0]
    assert job == "cancelled"

    start_worker(1)
    after = api.post("/train", json={"symbol": "MSFT", **FAST}).json()
    assert wait_for_models(clean, [after["model_id"]])[after["model_id"]]["status"] == "completed"
    row = clean.execute(
        "SELECT status::text, attempts FROM models WHERE id = %s", (queued["model_id"],)
    ).fetchone()
    assert row == ("cancelled", 0)

    again = api.post(f"/models/{queued['model_id']}/cancel")
    assert again.status_code == 409
    assert (
        again.json()["error"]
        == f"model {queued['model_id']} is already cancelled: only a queued or running model can be cancelled"
    )
    done = api.post(f"/models/{after['model_id']}/cancel")
    assert done.status_code == 409 and "already completed" in done.json()["error"]
    assert api.post("/models/999999/cancel").status_code == 404
    # A cancelled model may be submitted again (it is not live).
    assert api.post("/train", json={"symbol": "AAPL", **FAST}).status_code == 201


def test_cancel_a_running_model_kills_its_training(clean, api, database, start_worker):
    worker = start_worker(1)
    slow = {"symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": {"n_estimators": 3000}}
    running = api.post("/train", json=slow).json()["model_id"]
    # Well into training: the training process has reported a phase past loading the bars on the row.
    deadline = time.monotonic() + 120
    while True:
        status, phase = clean.execute(
            "SELECT status::text, progress->>'phase' FROM models WHERE id = %s", (running,)
        ).fetchone()
        if status == "running" and phase not in (None, "starting", "loading"):
            break
        assert time.monotonic() < deadline, (status, phase, worker.output)
        time.sleep(0.05)

    cli = run_sfq("cancel", str(running), url=database)
    assert cli.returncode == 0 and cli.stdout.strip() == f"model {running} cancelled", cli.stderr
    worker.wait_for_line(rf"model {running}: cancelled; training process killed", timeout=60)
    jobs = wait_for_jobs(clean, timeout=60)
    assert jobs[running] == "aborted"
    row = clean.execute(
        "SELECT m.status::text, (SELECT count(*) FROM model_artifacts WHERE model_id = m.id),"
        " (SELECT string_agg(outcome, ',') FROM model_attempts WHERE model_id = m.id)"
        " FROM models m WHERE id = %s",
        (running,),
    ).fetchone()
    assert row == ("cancelled", 0, "cancelled")

    # The worker goes on with the next job.
    nxt = api.post("/train", json={"symbol": "MSFT", **FAST}).json()["model_id"]
    assert wait_for_models(clean, [nxt])[nxt]["status"] == "completed"
    assert (
        run_sfq("cancel", str(nxt), url=database)
        .stderr.strip()
        .endswith("is already completed: only a queued or running model can be cancelled")
    )


def test_results_endpoints_and_live_predict(clean, api, database, start_worker, tmp_path):
    queued = api.post("/train", json={"symbol": "IBM", **FAST}).json()
    model_id = queued["model_id"]
    early = api.post(f"/models/{model_id}/predict")
    assert early.status_code == 409 and "only a completed model can predict" in early.json()["error"]
    assert api.get(f"/models/{model_id}/artifact").status_code == 409
    assert api.get(f"/models/{model_id}/features").json()["features"] == []

    start_worker(1)
    assert wait_for_models(clean, [model_id])[model_id]["status"] == "completed"

    features = api.get(f"/models/{model_id}/features").json()["features"]
    assert [f["rank"] for f in features] == list(range(1, len(features) + 1))
    assert [f["importance"] for f in features] == sorted((f["importance"] for f in features), reverse=True)

    predictions = api.get(f"/models/{model_id}/predictions").json()["predictions"]
    assert len(predictions) == FAST["test_window"]
    assert [p["ts"] for p in predictions] == sorted(p["ts"] for p in predictions)
    assert all({"ts", "predicted", "actual"} == p.keys() for p in predictions)

    artifact = api.get(f"/models/{model_id}/artifact")
    assert artifact.status_code == 200
    assert hashlib.sha256(artifact.content).hexdigest() == artifact.headers["x-content-sha256"]
    assert api.get(f"/models/{model_id}").json()["artifact_sha256"] == artifact.headers["x-content-sha256"]
    model = artifacts.load(artifact.content, artifact.headers["x-content-sha256"])
    assert hasattr(model, "predict")

    forecast = api.post(f"/models/{model_id}/predict")
    assert forecast.status_code == 200, forecast.text
    body = forecast.json()
    assert body["status"] == "completed" and body["as_of"] == latest_bar(clean, "IBM").isoformat()
    close = clean.execute(
        "SELECT close FROM bars WHERE symbol = 'IBM' AND ts = %s", (latest_bar(clean, "IBM"),)
    ).fetchone()[0]
    assert body["reference_close"] == close
    assert body["predicted_price"] == pytest.approx(close * 2.718281828459045 ** body["prediction"])
    # Asked again before a new bar: the same forecast, answered at once.
    assert api.post(f"/models/{model_id}/predict").json()["id"] == body["id"]
    assert api.get(body["url"].replace(str(api.base_url), "")).json()["prediction"] == body["prediction"]
    assert api.post("/models/999999/predict").status_code == 404
    assert api.post(f"/models/{model_id}/predict?wait=x").status_code == 422

    cli = run_sfq("predict", str(model_id), url=database)
    assert cli.returncode == 0 and json.loads(cli.stdout)["prediction"] == body["prediction"], cli.stderr
    out = tmp_path / "m.skops"
    cli = run_sfq("artifact", str(model_id), "-o", str(out), url=database)
    assert cli.returncode == 0 and hashlib.sha256(out.read_bytes()).hexdigest() in cli.stdout
    cli = run_sfq("predictions", str(model_id), url=database)
    assert cli.returncode == 0 and len(cli.stdout.splitlines()) == FAST["test_window"] + 1
    cli = run_sfq("features", str(model_id), url=database)
    assert cli.returncode == 0 and cli.stdout.split()[1] == features[0]["feature"]


def test_leaderboard_sorts_by_any_stored_metric(clean, api, database, start_worker):
    start_worker(1)
    ids = [
        api.post("/train", json={"symbol": symbol, **FAST}).json()["model_id"]
        for symbol in ("AAPL", "MSFT", "GOOG")
    ]
    models = wait_for_models(clean, ids)
    for metric in ("ic", "naive_rmse", "cv_r2_mean"):
        board = api.get("/models", params={"sort": metric, "order": "asc"}).json()["models"]
        values = [m["metrics"][metric] for m in board]
        assert values == sorted(values) and len(values) == 3
    cli = run_sfq("models", "--sort", "ic", url=database)
    best = max(models.values(), key=lambda m: m["metrics"]["ic"])
    assert cli.stdout.splitlines()[1].split()[0] == str(best["id"])


def test_sql_clients_have_the_same_operations(clean):
    """What HTTP and the CLI call is plain SQL another service can call too, in its own transaction."""
    model_id, _, _ = insert_request(clean, {"symbol": "AAPL", **FAST})
    batch = clean.execute(
        'SELECT model_id, target_col FROM sfq_submit_batch(\'{"symbol": "GOOG"}\')'
    ).fetchall()
    assert [t for _, t in batch] == ["open", "close", "high", "low"]
    child = clean.execute("SELECT model_id FROM sfq_evolve(%s, '{\"horizon\": 3}')", (model_id,)).fetchone()[
        0
    ]
    assert clean.execute(
        "SELECT parent_model_id, horizon FROM models WHERE id = %s", (child,)
    ).fetchone() == (model_id, 3)
    assert (
        clean.execute("SELECT status::text FROM sfq_cancel_model(%s)", (child,)).fetchone()[0] == "cancelled"
    )
    with clean.transaction():  # a cancel rolled back with its caller's transaction leaves the model queued
        clean.execute("SELECT sfq_cancel_model(%s)", (model_id,))
        raise psycopg.Rollback()
    assert (
        clean.execute("SELECT status::text FROM models WHERE id = %s", (model_id,)).fetchone()[0] == "queued"
    )
