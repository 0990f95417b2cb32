"""Model files, content-addressed (sql/schema/tables.sql: blobs, blob_chunks, model_artifacts): a file's
bytes are stored once under their SHA-256, in PostgreSQL in 8 MiB chunks (gateway.CHUNK_BYTES) or, with
SFQ_ARTIFACT_STORE, in a store outside it (file:///path, s3://bucket/prefix, any fsspec URL) under
`<store>/<sha256>`, PostgreSQL keeping the reference. Reading is a chunk at a time and checks the bytes
against the SHA-256 recorded when the model was trained; a mismatch is an ArtifactError naming the model.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
import psycopg

from queue_app import gateway
from queue_app.errors import ArtifactError, Conflict, NotFound

READ_BYTES = gateway.CHUNK_BYTES  # what one read from an outside store asks for


class Evicted(Conflict):
    """The model's file was evicted by the retention policy: a forecast or backtest rebuilds it."""


def object_url(store: str, sha256: str) -> str:
    return f"{store.rstrip('/')}/{sha256}"


def put(store: str, data: bytes) -> gateway.BlobWrite:
    """The bytes written to the outside store under their SHA-256 (once: same bytes, same object), and
    the blob that links them. Written to a temporary name first and moved, so a reader never sees half."""
    sha256 = hashlib.sha256(data).hexdigest()
    filesystem, path = fsspec.core.url_to_fs(object_url(store, sha256))
    if not filesystem.exists(path):
        filesystem.makedirs(path.rpartition("/")[0], exist_ok=True)  # a local store's folder, made once
        partial = f"{path}.partial-{uuid.uuid4().hex}"
        with filesystem.open(partial, "wb") as out:
            out.write(data)
        filesystem.mv(partial, path)
    return gateway.BlobWrite(sha256, len(data), location=store)


def remove(store: str, sha256: str) -> None:
    """An outside store's object, once sfq_collect_blobs removed its blob (gone already: nothing to do)."""
    filesystem, path = fsspec.core.url_to_fs(object_url(store, sha256))
    if filesystem.exists(path):
        filesystem.rm(path)


def evict(
    conn: psycopg.Connection,
    older_than_days: int,
    keep_top: int,
    metric: str,
    descending: bool,
    model_ids: list[int] | None,
    dry_run: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The retention policy (sql/schema/artifacts.sql): the files evicted (or that would be, dry run),
    then the blobs no model links to any more removed, with their objects in an outside store."""
    evicted = gateway.run(
        conn, gateway.evict_artifacts(older_than_days, keep_top, metric, descending, model_ids, dry_run)
    )
    if dry_run:
        return evicted, []
    collected = gateway.run(conn, gateway.collect_blobs())
    for blob in collected:
        if blob["location"] is not None:
            remove(blob["location"], blob["sha256"])
    return evicted, collected


def describe(conn: psycopg.Connection, model_id: int) -> dict[str, Any]:
    """The model's file as model_artifacts records it; NotFound when the model has none."""
    row = gateway.run(conn, gateway.model_artifact(model_id))
    if row is None:
        raise NotFound(f"model {model_id} has no model file")
    return row


def present(row: dict[str, Any]) -> dict[str, Any]:
    """The model's file row, when it has its bytes; Evicted otherwise."""
    if row["blob"] is None:
        raise Evicted(
            f"model {row['model_id']}'s file was evicted (retention); a forecast "
            f"(POST /models/{row['model_id']}/predict, sfq predict) rebuilds it"
        )
    return row


def chunks(conn: psycopg.Connection | None, row: dict[str, Any]) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time, unchecked (`read` checks them); Evicted when it has none.
    A file in an outside store needs no connection."""
    present(row)
    if row["location"] is not None:
        with fsspec.open(object_url(row["location"], row["blob"]), "rb") as source:
            while piece := source.read(READ_BYTES):
                yield piece
        return
    for n in range(row["chunks"]):
        piece = gateway.run(conn, gateway.blob_chunk(row["blob"], n))  # type: ignore[arg-type]
        if piece is None:
            raise ArtifactError(f"model {row['model_id']}'s file lost chunk {n} of blob {row['blob']}")
        yield piece


def read(conn: psycopg.Connection, row: dict[str, Any]) -> bytes:
    """The whole file, checked against the recorded SHA-256 (ArtifactError naming the model otherwise)."""
    data = io.BytesIO()
    write_to(conn, row, data)
    return data.getvalue()


def write_to(conn: psycopg.Connection | None, row: dict[str, Any], out: BinaryIO) -> None:
    """The file written to `out` a chunk at a time, then checked against the recorded SHA-256
    (ArtifactError naming the model otherwise: what was written is not the model's file)."""
    digest = hashlib.sha256()
    for piece in chunks(conn, row):
        digest.update(piece)
        out.write(piece)
    check(row["model_id"], row["sha256"], digest.hexdigest())


def check(model_id: int, recorded: str, actual: str) -> None:
    if actual != recorded:
        raise ArtifactError(
            f"model {model_id}'s file does not match its recorded SHA-256: {actual} is not {recorded}"
        )
