"""OpenTelemetry traces (queue_app.tracing): a real API, worker and CLI export their spans over OTLP/HTTP to a
small receiver here, configured by the standard OTEL_* variables only; the spans of a submission (HTTP,
SQL or CLI) and of its model's training and backtest are one trace, in the messaging conventions."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from queue_app import bars, db
from tests.conftest import (
    QUICK_RESCUE,
    SLOW,
    Process,
    free_port,
    insert_request,
    run_sfq,
    taken_by,
    wait_for_models,
)

FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60, "cv_folds": 3}
KINDS = {SpanProto.SPAN_KIND_PRODUCER: "producer", SpanProto.SPAN_KIND_CONSUMER: "consumer"}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class Receiver:
    """An OTLP/HTTP trace receiver (protobuf, as opentelemetry-exporter-otlp-proto-http sends) on loopback:
    every span it is sent, flattened to a dict."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver._receive(self.path, body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _receive(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces", path
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "service": resource.get("service.name"),
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": KINDS.get(span.kind, "internal"),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "error": span.status.code == span.status.STATUS_CODE_ERROR,
                        }
                    )

    def env(self) -> dict[str, str]:
        """The standard variables that turn tracing on: an OTLP endpoint (the exporter is otlp by default)
        and a short batch delay, so that spans arrive within moments."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}

    def wait_for(self, trace_id: str, names: list[str], timeout: float = 60) -> list[dict]:
        """The spans of a trace, once it has every name in `names` (as many times as listed)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in list(self.spans) if s["trace_id"] == trace_id]
            if all(sum(s["name"] == n for s in found) >= names.count(n) for n in names):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id}: wanted {names}, got {[s['name'] for s in found]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _one(spans: list[dict], name: str) -> dict:
    (span,) = [s for s in spans if s["name"] == name]
    return span


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _unique(n: int) -> dict:
    """A fast spec no other test submits (the database is shared by the run's tests)."""
    return {**FAST, "run": 16_000 + n}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced(database, receiver) -> Iterator[str]:
    """A real API and a real worker with tracing on through the OTEL_* variables; the API's URL."""
    port = free_port()
    env = {"POSTGRES_URL": database, **receiver.env()}
    api = Process(["api", "--port", str(port)], env)
    worker = Process(["worker", "1"], env)
    try:
        api.wait_for_line(r"Uvicorn running on")
        worker.wait_for_line(r"worker \d+ ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()
        worker.stop()


def _stored(conn: psycopg.Connection, model_id: int) -> tuple[str | None, str | None]:
    """The traceparent stored with the model's (first) request, and with the model."""
    return conn.execute(
        "SELECT r.traceparent, m.traceparent FROM training_requests r JOIN models m ON m.id = r.model_id"
        " WHERE r.model_id = %s ORDER BY r.id LIMIT 1",
        (model_id,),
    ).fetchone()


def _wait_for_backtest(conn: psycopg.Connection, model_id: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute(
        "SELECT 1 FROM simulation_history WHERE model_id = %s AND status = 'queued'", (model_id,)
    ).fetchone():
        assert time.monotonic() < deadline, f"model {model_id}'s backtest still queued"
        time.sleep(0.1)


def _assert_training_trace(
    conn: psycopg.Connection, receiver: Receiver, model_id: int, trace_id: str, parent: str
):
    """The model's training and backtest spans: in the trace, under `parent` (the stored context's span),
    with the messaging conventions' attributes."""
    _wait_for_backtest(conn, model_id)
    job_id, fingerprint, attempts = conn.execute(
        "SELECT job_id, fingerprint, attempts FROM models WHERE id = %s", (model_id,)
    ).fetchone()
    simulation_job = conn.execute(
        "SELECT job_id FROM simulation_history WHERE model_id = %s", (model_id,)
    ).fetchone()[0]
    names = ["process training", "train", "cross-validation", "cv fold", "cv fold", "cv fold", "fit"]
    spans = receiver.wait_for(trace_id, [*names, "store results", "process simulation", "backtest"])
    process = _one(spans, "process training")
    assert process["kind"] == "consumer"
    assert process["service"] == "sfq-worker"
    assert process["parent_span_id"] == parent
    assert process["links"] == [(trace_id, parent)]  # the creation context, linked as well as parent
    assert process["attributes"] == {
        "messaging.system": "procrastinate",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "training",
        "messaging.message.id": str(job_id),
        "sfq.model.id": model_id,
        "sfq.model.fingerprint": fingerprint,
        "sfq.model.algorithm": "Ridge",
        "sfq.attempt": attempts,
    }
    train = _one(spans, "train")
    assert train["parent_span_id"] == process["span_id"]
    cv = _one(spans, "cross-validation")
    assert cv["parent_span_id"] == train["span_id"]
    folds = sorted((s for s in spans if s["name"] == "cv fold"), key=lambda s: s["attributes"]["sfq.fold"])
    assert [f["attributes"]["sfq.fold"] for f in folds] == [1, 2, 3]
    assert all(
        f["parent_span_id"] == cv["span_id"] and cv["start"] <= f["start"] <= f["end"] <= cv["end"]
        for f in folds
    )
    assert train["start"] <= cv["start"] <= cv["end"] <= train["end"] <= process["end"]
    stored = [s for s in spans if s["name"] == "store results" and s["parent_span_id"] == process["span_id"]]
    assert len(stored) == 1
    simulation = _one(spans, "process simulation")
    assert simulation["kind"] == "consumer" and simulation["parent_span_id"] == parent
    assert simulation["attributes"]["messaging.destination.name"] == "simulation"
    assert simulation["attributes"]["messaging.message.id"] == str(simulation_job)
    assert simulation["attributes"]["sfq.model.id"] == model_id
    assert _one(spans, "backtest")["parent_span_id"] == simulation["span_id"]
    assert not any(s["error"] for s in spans)


def test_http_submission_with_traceparent_is_one_trace_with_its_training_and_backtest(traced, receiver, conn):
    header, trace_id, caller_span = _traceparent()
    answer = httpx.post(f"{traced}/train", json=_unique(1), headers={"traceparent": header}, timeout=30)
    assert answer.status_code == 201, answer.text
    model_id = answer.json()["model_id"]
    assert wait_for_models(conn, [model_id])[model_id]["status"] == "completed"

    send = _one(receiver.wait_for(trace_id, ["send training"]), "send training")
    assert send["kind"] == "producer" and send["service"] == "sfq-api"
    assert send["parent_span_id"] == caller_span  # a child of the caller's span
    job_id = conn.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()[0]
    assert send["attributes"] == {
        "messaging.system": "procrastinate",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "training",
        "messaging.message.id": str(job_id),
        "sfq.model.ids": [model_id],
        "sfq.deduplicated": False,
    }
    # The producer span's context is what is stored, with the request and its model.
    stored = f"00-{trace_id}-{send['span_id']}-01"
    assert _stored(conn, model_id) == (stored, stored)
    _assert_training_trace(conn, receiver, model_id, trace_id, send["span_id"])


def test_deduplicated_and_batch_submissions_say_what_they_sent(traced, receiver, conn):
    """A request an existing model serves sends no message (its span says so; the model keeps the context
    of the request that made it); a batch sends one per new model, counted."""
    body = _unique(1)  # the model of the test above, or made here
    first = httpx.post(f"{traced}/train", json=body, timeout=30).json()
    header, trace_id, _ = _traceparent()
    again = httpx.post(f"{traced}/train", json=body, headers={"traceparent": header}, timeout=30)
    assert again.status_code == 200 and again.json()["deduplicated"], again.text
    send = _one(receiver.wait_for(trace_id, ["send training"]), "send training")
    assert send["attributes"]["sfq.deduplicated"] is True
    assert send["attributes"]["sfq.model.ids"] == [first["model_id"]]
    assert "messaging.message.id" not in send["attributes"]
    request = conn.execute(
        "SELECT traceparent FROM training_requests WHERE model_id = %s ORDER BY id DESC LIMIT 1",
        (first["model_id"],),
    ).fetchone()[0]
    assert request == f"00-{trace_id}-{send['span_id']}-01" != _stored(conn, first["model_id"])[1]

    header, trace_id, caller_span = _traceparent()
    batch = httpx.post(f"{traced}/train/batch", json=_unique(7), headers={"traceparent": header}, timeout=30)
    assert batch.status_code == 201, batch.text
    model_ids = batch.json()["model_ids"]
    send = _one(receiver.wait_for(trace_id, ["send training"]), "send training")
    assert send["parent_span_id"] == caller_span
    assert send["attributes"]["messaging.batch.message_count"] == 4
    assert sorted(send["attributes"]["sfq.model.ids"]) == sorted(model_ids)
    stored = f"00-{trace_id}-{send['span_id']}-01"
    assert all(_stored(conn, model_id) == (stored, stored) for model_id in model_ids)
    wait_for_models(conn, model_ids)


def test_sql_insert_with_traceparent_joins_the_callers_trace(traced, receiver, conn):
    traceparent, trace_id, caller_span = _traceparent()
    model_id, _, _ = insert_request(conn, {**_unique(2), "traceparent": traceparent})
    assert wait_for_models(conn, [model_id])[model_id]["status"] == "completed"
    assert _stored(conn, model_id) == (traceparent, traceparent)
    _assert_training_trace(conn, receiver, model_id, trace_id, caller_span)


def test_cli_submit_sends_in_the_trace_of_TRACEPARENT(traced, receiver, conn, database):
    traceparent, trace_id, caller_span = _traceparent()
    args = [f"--{k.replace('_', '-')}={v}" for k, v in _unique(3).items()]
    done = run_sfq("submit", *args, url=database, TRACEPARENT=traceparent, **receiver.env())
    assert done.returncode == 0, done.stderr
    model_id = int(done.stdout.split()[1])
    send = _one(receiver.wait_for(trace_id, ["send training"]), "send training")
    assert send["service"] == "sfq-cli" and send["kind"] == "producer"
    assert send["parent_span_id"] == caller_span
    stored = conn.execute(
        "SELECT traceparent FROM training_requests WHERE model_id = %s", (model_id,)
    ).fetchone()[0]
    assert stored == f"00-{trace_id}-{send['span_id']}-01"
    assert wait_for_models(conn, [model_id])[model_id]["status"] == "completed"
    _assert_training_trace(conn, receiver, model_id, trace_id, send["span_id"])


@pytest.mark.parametrize(
    "traceparent",
    [
        "not a traceparent",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # an all-zero trace id
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",  # an all-zero span id
        "00-" + "A" * 32 + "-" + "b" * 16 + "-01",  # uppercase
        "01-" + "a" * 32 + "-" + "b" * 16 + "-01",  # a version sfq does not store
    ],
)
def test_malformed_traceparent_is_refused_naming_the_column_and_the_field(traced, conn, traceparent):
    before = conn.execute("SELECT count(*) FROM training_requests").fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        insert_request(conn, {**_unique(4), "traceparent": traceparent})
    assert refused.value.diag.column_name == "traceparent"
    assert "not a W3C traceparent" in refused.value.diag.message_primary

    answer = httpx.post(f"{traced}/train", json={**_unique(4), "traceparent": traceparent}, timeout=30)
    assert answer.status_code == 422
    assert answer.json()["detail"] == {"field": "traceparent"}
    assert conn.execute("SELECT count(*) FROM training_requests").fetchone()[0] == before


def test_malformed_traceparent_header_starts_a_new_trace(traced, receiver, conn):
    """W3C Trace Context: a traceparent header that cannot be parsed is ignored (a new trace), not refused."""
    answer = httpx.post(
        f"{traced}/train", json=_unique(5), headers={"traceparent": "00-nonsense-01"}, timeout=30
    )
    assert answer.status_code == 201, answer.text
    model_id = answer.json()["model_id"]
    _, stored = _stored(conn, model_id)
    _, trace_id, span_id, _ = stored.split("-")
    send = _one(receiver.wait_for(trace_id, ["send training"]), "send training")
    assert send["span_id"] == span_id and send["parent_span_id"] == ""
    wait_for_models(conn, [model_id])


def _database_of_its_own(make_database) -> str:
    """A database with AAPL's bars that the module's traced worker does not serve."""
    url = make_database()
    db.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        bars.load(conn, "AAPL", "1d", dict(bars.sample_bars())["AAPL"])
    return url


# `scripts/test -m slow` (README, "Tests"): the rescued job's span below is its counterpart in `scripts/test`.
@pytest.mark.slow
def test_a_retried_attempt_is_a_new_span_with_the_same_parent_and_link(make_database, receiver):
    """A worker stopped mid-training puts the job back (its span ends in error); the next attempt, on
    another worker, is a new "process training" span under the same stored context, linked to it."""
    url = _database_of_its_own(make_database)
    env = {"POSTGRES_URL": url, "SFQ_GRACE_S": "1", **receiver.env()}
    first = Process(["worker", "1"], env)
    second = None
    try:
        first.wait_for_line(r"worker \d+ ready")
        traceparent, trace_id, caller_span = _traceparent()
        with psycopg.connect(url, autocommit=True) as conn:
            model_id, _, _ = insert_request(conn, {"symbol": "AAPL", **SLOW, "traceparent": traceparent})
            first.wait_for_line(rf"model {model_id} starting")
            first.popen.send_signal(signal.SIGTERM)
            assert first.popen.wait(timeout=60) == 0
            second = Process(["worker", "2"], env)
            model = wait_for_models(conn, [model_id], timeout=180)[model_id]
            assert (model["status"], model["attempts"]) == ("completed", 2)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    spans = receiver.wait_for(trace_id, ["process training", "process training"])
    attempts = sorted(
        (s for s in spans if s["name"] == "process training"), key=lambda s: s["attributes"]["sfq.attempt"]
    )
    assert [a["attributes"]["sfq.attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["span_id"] != attempts[1]["span_id"]
    assert all(a["parent_span_id"] == caller_span for a in attempts)
    assert all(a["links"] == [(trace_id, caller_span)] for a in attempts)
    assert [a["error"] for a in attempts] == [True, False]  # the interrupted attempt, then the one that ended


def test_a_rescued_job_is_a_new_span_with_the_same_parent_and_link(make_database, receiver):
    """A worker killed mid-training exports nothing more; the job another worker's rescue defers in its
    place is processed in a span under the request's stored context, linked to it, naming the new job."""
    url = _database_of_its_own(make_database)
    env = {"POSTGRES_URL": url, **QUICK_RESCUE, **receiver.env()}
    workers = [Process(["worker", str(n)], env) for n in (1, 2)]
    try:
        for worker in workers:
            worker.wait_for_line(r"worker \d+ ready")
        traceparent, trace_id, caller_span = _traceparent()
        with psycopg.connect(url, autocommit=True) as conn:
            model_id, _, _ = insert_request(conn, {"symbol": "AAPL", **SLOW, "traceparent": traceparent})
            doomed, _ = taken_by(conn, model_id, workers)
            doomed.wait_for_line(rf"model {model_id} starting")
            doomed.popen.send_signal(signal.SIGKILL)
            model = wait_for_models(conn, [model_id], timeout=180)[model_id]
            assert (model["status"], model["attempts"]) == ("completed", 2)
            jobs = conn.execute(
                "SELECT array_agg(id ORDER BY id) FROM procrastinate_jobs WHERE task_name = 'train_model'"
            ).fetchone()[0]
    finally:
        for worker in workers:
            worker.stop()
    (process,) = [
        s for s in receiver.wait_for(trace_id, ["process training"]) if s["name"] == "process training"
    ]
    assert process["attributes"]["sfq.attempt"] == 2
    assert process["attributes"]["messaging.message.id"] == str(jobs[-1]) != str(jobs[0])  # the rescue's job
    assert process["parent_span_id"] == caller_span
    assert process["links"] == [(trace_id, caller_span)]
    assert not process["error"]


def test_without_otel_variables_nothing_is_traced_or_stored(make_database, receiver):
    """Tracing is opt-in: with no OTEL_* variable the API and the worker export nothing, and a caller's
    traceparent header is not read (nothing stored, no span). On a database of its own, so that the traced
    worker of the other tests takes none of its jobs; its processes stopped (which flushes any exporter)
    before the receiver is read."""
    assert not [name for name in os.environ if name.startswith("OTEL_")], (
        "the runner's environment sets OTEL_*"
    )
    url = _database_of_its_own(make_database)
    port = free_port()
    api = Process(["api", "--port", str(port)], {"POSTGRES_URL": url})
    worker = Process(["worker", "1"], {"POSTGRES_URL": url})
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            api.wait_for_line(r"Uvicorn running on")
            worker.wait_for_line(r"worker \d+ ready")
            header, trace_id, _ = _traceparent()
            answer = httpx.post(
                f"http://127.0.0.1:{port}/train", json=_unique(6), headers={"traceparent": header}, timeout=30
            )
            assert answer.status_code == 201, answer.text
            model_id, fingerprint = answer.json()["model_id"], answer.json()["fingerprint"]
            assert wait_for_models(conn, [model_id])[model_id]["status"] == "completed"
            _wait_for_backtest(conn, model_id)
            assert _stored(conn, model_id) == (None, None)
    finally:
        api.stop()
        worker.stop()
    assert not [
        s
        for s in receiver.spans
        if s["trace_id"] == trace_id or s["attributes"].get("sfq.model.fingerprint") == fingerprint
    ]
