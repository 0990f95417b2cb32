"""Retention of model files (`sfq artifacts evict`, sql/schema/artifacts.sql) with real workers: files of
models that are not aliased, not in their symbol's top K and older than N days are evicted, and rebuilt on
demand by retraining to the recorded SHA-256 (a mismatch fails the forecast naming the model); a setting
that would evict an aliased model is refused and evicts nothing; SFQ_ARTIFACT_STORE=file:// keeps the
bytes outside PostgreSQL end to end."""

from __future__ import annotations

import hashlib

from tests.conftest import run_sfq, wait_for_models

FOREST = {
    "symbol": "AAPL",
    "algorithm": "RandomForest",
    "hyperparameters": {"n_estimators": 5, "max_depth": 4},
    "train_window": 300,
    "test_window": 60,
    "cv_folds": 2,
}


def _trained(conn, api, count: int) -> list[int]:
    ids = [api.post("/train", json={**FOREST, "horizon": 1 + n}).json()["model_id"] for n in range(count)]
    assert all(m["status"] == "completed" for m in wait_for_models(conn, ids).values())
    return ids


def _file(conn, model_id: int) -> tuple[str, str | None]:
    """The model's recorded SHA-256 and its blob (None: evicted)."""
    return conn.execute(
        "SELECT sha256, blob FROM model_artifacts WHERE model_id = %s", (model_id,)
    ).fetchone()


def _evict(database, *args: str):
    return run_sfq("artifacts", "evict", *args, url=database)


def test_evicted_files_are_rebuilt_on_demand_to_their_recorded_sha256(clean, api, database, start_worker):
    start_worker(1)
    model_id, other = _trained(clean, api, 2)
    recorded, blob = _file(clean, model_id)
    assert blob == recorded

    dry = _evict(database, "--older-than", "0", "--keep-top", "0", "--model", str(model_id), "--dry-run")
    assert dry.returncode == 0 and f"model {model_id}: would evict" in dry.stdout, dry.stderr
    assert _file(clean, model_id)[1] == recorded  # a dry run changes nothing

    evicted = _evict(database, "--older-than", "0", "--keep-top", "0", "--model", str(model_id))
    assert evicted.returncode == 0 and f"model {model_id}: evicted" in evicted.stdout, evicted.stderr
    assert _file(clean, model_id) == (recorded, None)
    assert clean.execute("SELECT count(*) FROM blobs WHERE sha256 = %s", (recorded,)).fetchone()[0] == 0
    assert _file(clean, other)[1] is not None  # not asked for: kept
    download = api.get(f"/models/{model_id}/artifact")
    assert download.status_code == 409 and "evicted" in download.json()["error"]

    forecast = api.post(f"/models/{model_id}/predict")  # needs the file: rebuilt by retraining
    assert forecast.status_code == 200 and forecast.json()["status"] == "completed", forecast.text
    assert _file(clean, model_id) == (recorded, recorded)
    rebuilt = api.get(f"/models/{model_id}/artifact")
    assert hashlib.sha256(rebuilt.content).hexdigest() == recorded

    # A rebuilt file whose SHA-256 is not the recorded one is refused, naming the model; nothing stored.
    assert _evict(database, "--older-than", "0", "--keep-top", "0", "--model", str(model_id)).returncode == 0
    clean.execute("UPDATE model_artifacts SET sha256 = repeat('f', 64) WHERE model_id = %s", (model_id,))
    clean.execute("DELETE FROM model_forecasts WHERE model_id = %s", (model_id,))
    refused = api.post(f"/models/{model_id}/predict")
    assert refused.status_code == 422, refused.text
    assert f"model {model_id}'s file does not match its recorded SHA-256" in refused.json()["error"]
    assert _file(clean, model_id)[1] is None
    assert clean.execute("SELECT count(*) FROM blobs WHERE sha256 = %s", (recorded,)).fetchone()[0] == 0


def test_the_policy_keeps_aliased_top_and_recent_models_and_refuses_to_evict_an_aliased_one(
    clean, api, database, start_worker
):
    start_worker(1)
    ids = _trained(clean, api, 4)
    by_ic = [
        row[0]
        for row in clean.execute(
            "SELECT id FROM models WHERE id = ANY(%s) ORDER BY (metrics->>'ic')::float8 DESC, id DESC", (ids,)
        )
    ]
    aliased = by_ic[-1]
    clean.execute("INSERT INTO strategies (name) VALUES ('keep') ON CONFLICT DO NOTHING")
    clean.execute("SELECT sfq_move_alias('keep', 'production', %s, 'kept')", (aliased,))

    # Asking for an aliased model's file: refused, and nothing evicted (not even the others asked for).
    refused = _evict(
        database, "--older-than", "0", "--keep-top", "0", "--model", str(by_ic[1]), "--model", str(aliased)
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"aliased models keep their files: model {aliased} (keep/production)" in refused.stderr
    assert all(_file(clean, m)[1] is not None for m in ids)
    # Bad settings name the setting.
    negative = _evict(database, "--older-than", "-1", "--keep-top", "0")
    assert negative.returncode == 1 and "older_than_days" in negative.stderr
    assert all(_file(clean, m)[1] is not None for m in ids)

    # Trained just now: nothing is older than a day.
    assert "0 file(s) evicted" in _evict(database, "--older-than", "1", "--keep-top", "0").stdout
    # The top 1 of AAPL by ic and the aliased model keep their files; the others go.
    policy = _evict(database, "--older-than", "0", "--keep-top", "1", "--metric", "ic")
    assert policy.returncode == 0, policy.stderr
    kept = {m for m in ids if _file(clean, m)[1] is not None}
    assert kept == {by_ic[0], aliased}
    assert "2 file(s) evicted" in policy.stdout


def test_a_file_store_outside_postgresql_end_to_end(clean, api, database, start_worker, tmp_path):
    store = tmp_path / "models"
    start_worker(1, SFQ_ARTIFACT_STORE=f"file://{store}")
    (model_id,) = _trained(clean, api, 1)
    recorded, blob = _file(clean, model_id)
    location, chunks = clean.execute(
        "SELECT location, chunks FROM blobs WHERE sha256 = %s", (blob,)
    ).fetchone()
    assert location == f"file://{store}" and chunks == 0
    assert clean.execute("SELECT count(*) FROM blob_chunks").fetchone()[0] == 0
    assert hashlib.sha256((store / recorded).read_bytes()).hexdigest() == recorded

    forecast = api.post(f"/models/{model_id}/predict")  # the worker reads the file from the store
    assert forecast.status_code == 200 and forecast.json()["status"] == "completed", forecast.text
    download = api.get(f"/models/{model_id}/artifact")  # and so does the API
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == recorded

    # Evicted: the object leaves the store; a forecast rebuilds it there, to the same SHA-256.
    assert _evict(database, "--older-than", "0", "--keep-top", "0").returncode == 0
    assert not (store / recorded).exists()
    clean.execute("DELETE FROM model_forecasts WHERE model_id = %s", (model_id,))
    again = api.post(f"/models/{model_id}/predict")
    assert again.status_code == 200 and again.json()["status"] == "completed", again.text
    assert hashlib.sha256((store / recorded).read_bytes()).hexdigest() == recorded
    assert _file(clean, model_id) == (recorded, recorded)
