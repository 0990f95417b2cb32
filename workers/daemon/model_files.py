"""A stored model, loaded for a forecast or a lockbox backtest: its file read a chunk at a time and
checked against the SHA-256 recorded at training (queue_app/artifact_store.py), or, when the retention
policy evicted it, rebuilt by training the model's spec again on the same bars (same fingerprint, same
seed): the rebuilt file must hash to the recorded SHA-256, or it is refused with an error naming the
model and nothing is stored. The rebuild runs in the side job's thread (like a forecast, in the daemon),
and is stored where new files go (SFQ_ARTIFACT_STORE or blob_chunks)."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from queue_app import artifact_store, gateway
from queue_app.config import Settings
from workers.daemon.data import load_bars
from workers.modelling import artifacts

log = logging.getLogger("sfq.model_files")


def load(conn: psycopg.Connection, model_id: int, spec: dict[str, Any]) -> Any:
    """The model `model_id` (trained from `spec`), from its stored file or rebuilt."""
    row = artifact_store.describe(conn, model_id)
    if row["blob"] is None:
        return artifacts.load(rebuild(conn, row, spec), row["sha256"])
    return artifacts.load(artifact_store.read(conn, row), row["sha256"])


def rebuild(conn: psycopg.Connection, row: dict[str, Any], spec: dict[str, Any]) -> bytes:
    """An evicted model's file, trained again and stored once it hashes to the recorded SHA-256."""
    from workers.modelling.training import train, training_end

    model_id = row["model_id"]
    started = time.perf_counter()
    bars, context = load_bars(conn, spec, training_end(spec))
    result = train(spec, bars, context=context)
    artifact_store.check(model_id, row["sha256"], result.artifact_sha256)
    store = Settings.from_env().artifact_store
    blob = (
        artifact_store.put(store, result.artifact)
        if store
        else gateway.BlobWrite(result.artifact_sha256, len(result.artifact), result.artifact)
    )
    if not gateway.relink_blob(conn, model_id, blob):  # the recorded SHA-256 changed meanwhile
        artifact_store.check(model_id, artifact_store.describe(conn, model_id)["sha256"], blob.sha256)
    log.info(
        "model %s: evicted file rebuilt in %.1f s (sha256 %s)",
        model_id,
        time.perf_counter() - started,
        blob.sha256,
    )
    return result.artifact
