"""Model files content-addressed and chunked (queue_app/artifact_store.py, sql/schema/tables.sql blobs):
the same bytes are stored once, a file larger than a chunk round-trips through the database and the API,
and a file whose bytes are not the recorded ones is refused naming its model."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from queue_app import artifact_store, gateway
from queue_app.errors import ArtifactError
from tests.conftest import insert_request, wait_until

FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60}


def _models(conn, count: int) -> list[int]:
    return [insert_request(conn, {**FAST, "horizon": 1 + n})[0] for n in range(count)]


def _store(conn, model_id: int, data: bytes) -> gateway.BlobWrite:
    blob = gateway.BlobWrite(hashlib.sha256(data).hexdigest(), len(data), data)
    gateway.store_blob(conn, model_id, blob, "skops")
    return blob


def test_the_same_bytes_are_stored_once(clean):
    first, second, third = _models(clean, 3)
    same = os.urandom(1000)
    _store(clean, first, same)
    _store(clean, second, same)
    _store(clean, third, b"other bytes")
    assert clean.execute("SELECT count(*) FROM blobs").fetchone()[0] == 2
    assert clean.execute("SELECT count(*) FROM blob_chunks").fetchone()[0] == 2
    links = clean.execute("SELECT model_id, blob FROM model_artifacts ORDER BY model_id").fetchall()
    assert links[0][1] == links[1][1] == hashlib.sha256(same).hexdigest() != links[2][1]
    for model_id in (first, second):
        assert artifact_store.read(clean, artifact_store.describe(clean, model_id)) == same


def test_a_file_larger_than_a_chunk_round_trips(clean, api):
    (model_id,) = _models(clean, 1)
    data = os.urandom(2 * gateway.CHUNK_BYTES + 12345)
    blob = _store(clean, model_id, data)
    sizes = clean.execute(
        "SELECT n, octet_length(bytes) FROM blob_chunks WHERE sha256 = %s ORDER BY n", (blob.sha256,)
    ).fetchall()
    assert sizes == [(0, gateway.CHUNK_BYTES), (1, gateway.CHUNK_BYTES), (2, 12345)]
    assert artifact_store.read(clean, artifact_store.describe(clean, model_id)) == data
    # The API streams it a chunk at a time, with the recorded SHA-256 to check it against.
    clean.execute("UPDATE models SET status = 'completed' WHERE id = %s", (model_id,))
    answer = api.get(f"/models/{model_id}/artifact")
    assert answer.status_code == 200 and answer.content == data
    assert answer.headers["x-content-sha256"] == blob.sha256


def test_a_file_that_is_not_the_recorded_one_is_refused_naming_its_model(clean):
    (model_id,) = _models(clean, 1)
    _store(clean, model_id, b"the model's bytes")
    clean.execute("UPDATE model_artifacts SET sha256 = repeat('0', 64) WHERE model_id = %s", (model_id,))
    with pytest.raises(ArtifactError, match=f"model {model_id}'s file does not match its recorded SHA-256"):
        artifact_store.read(clean, artifact_store.describe(clean, model_id))


def test_collecting_blobs_keeps_one_a_model_links_to_meanwhile(clean, database):
    """A writer that finds the same bytes stored already (unlinked: their model's file was evicted) locks
    the blob's row (insert_blob) and links it; the collection, which chose it while it was unlinked, waits
    for the writer, is refused by the foreign key, and keeps it."""
    first, second = _models(clean, 2)
    blob = _store(clean, first, b"bytes two models share")
    clean.execute("UPDATE model_artifacts SET blob = NULL WHERE model_id = %s", (first,))  # evicted
    with psycopg.connect(database) as writer:
        writer.execute(gateway.QUERIES["insert_blob"].sql, blob.row())  # the same bytes: row locked
        with ThreadPoolExecutor(1) as pool:
            collected = pool.submit(lambda: gateway.run(clean, gateway.collect_blobs()))
            wait_until(lambda: _waiting_on_a_lock(database), "the collection waiting for the writer", 30)
            writer.execute(
                gateway.QUERIES["insert_artifact"].sql,
                {"model_id": second, "format": "skops", "sha256": blob.sha256, "size": blob.size},
            )
            writer.commit()
            assert collected.result(timeout=30) == []
    assert artifact_store.read(clean, artifact_store.describe(clean, second)) == b"bytes two models share"
    # Once no model links to it, it goes.
    clean.execute("UPDATE model_artifacts SET blob = NULL WHERE model_id = %s", (second,))
    assert [row["sha256"] for row in gateway.run(clean, gateway.collect_blobs())] == [blob.sha256]
    assert clean.execute("SELECT count(*) FROM blob_chunks").fetchone()[0] == 0


def _waiting_on_a_lock(database: str) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    query += " AND datname = current_database()"
    with psycopg.connect(database, autocommit=True) as watcher:
        return watcher.execute(query).fetchone()[0] > 0
