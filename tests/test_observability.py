"""Many hosts, live progress and what operators watch, with real workers, a real API and the CLI:
workers presenting different host names share one database, progress moves through the phases on the
model row, and `sfq status`, `sfq watch` and GET /metrics show the run."""

from __future__ import annotations

import json
import re
import time

from tests.conftest import insert_request, run_sfq, wait_for_models

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}
# Long enough for polling every 20 ms to see the folds and the final fit (100 trees: hundreds of ms each).
SLOW = {"algorithm": "RandomForest", "hyperparameters": '{"n_estimators": 100}', "train_window": 1000}
SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


def test_workers_on_different_hosts_share_the_queue(clean, start_worker, database):
    start_worker(1, SFQ_HOSTNAME="host-a")
    start_worker(2, SFQ_HOSTNAME="host-b")
    ids = [
        insert_request(clean, {"symbol": symbol, **FAST, "test_window": 60 + i})[0]
        for i in range(5)
        for symbol in ("AAPL", "MSFT")
    ]
    models = wait_for_models(clean, ids, timeout=120)
    assert {m["status"] for m in models.values()} == {"completed"}
    hosts = dict(
        clean.execute(
            "SELECT worker_host, count(*) FROM models WHERE id = ANY(%s) GROUP BY worker_host", (ids,)
        ).fetchall()
    )
    assert set(hosts) == {"host-a", "host-b"}, hosts  # the jobs spread across both "machines"
    attempts = clean.execute(
        "SELECT DISTINCT worker_host FROM model_attempts WHERE model_id = ANY(%s)", (ids,)
    ).fetchall()
    assert {row[0] for row in attempts} == {"host-a", "host-b"}  # every result records who produced it

    status = run_sfq("status", url=database)
    assert status.returncode == 0, status.stderr
    assert "workers (2 alive)" in status.stdout
    assert re.search(r"^\s+host-a\s+\d+\s+1\s", status.stdout, re.MULTILINE), status.stdout
    assert re.search(r"^\s+host-b\s+\d+\s+2\s", status.stdout, re.MULTILINE), status.stdout


def test_progress_moves_through_the_phases_and_the_cli_shows_it(clean, start_worker, database):
    start_worker(1)
    model_id, _, _ = insert_request(clean, {"symbol": "AAPL", **SLOW})
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, progress = clean.execute(
            "SELECT status::text, progress FROM models WHERE id = %s", (model_id,)
        ).fetchone()
        if progress and (not seen or seen[-1][0] != progress["phase"]):
            seen.append((progress["phase"], progress["fraction"]))
        if status in ("completed", "failed"):
            break
        time.sleep(0.02)
    phases = [phase for phase, _ in seen]
    assert status == "completed" and phases[-1] == "done", seen
    assert any(phase.startswith("fold ") and phase.endswith(" of 5") for phase in phases), seen
    assert "final fit" in phases or "saving" in phases, seen
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1  # never goes backwards

    watch = run_sfq("watch", str(model_id), url=database)
    assert watch.returncode == 0 and "100%  completed" in watch.stdout, watch.stdout

    waited = run_sfq(
        "submit",
        "--symbol",
        "MSFT",
        "--algorithm",
        "RandomForest",
        "--param",
        "n_estimators=20",  # the bar is printed whatever the size: its lines are its changes of phase
        "--wait",
        url=database,
    )
    assert waited.returncode == 0, waited.stderr
    assert re.search(r"\[[#.]+\]\s+\d+%", waited.stdout) and "completed" in waited.stdout, waited.stdout


def test_metrics_speak_prometheus_and_match_the_database(clean, start_worker, api, database):
    start_worker(1, SFQ_HOSTNAME="metrics-host")
    ids = [insert_request(clean, {"symbol": symbol, **FAST})[0] for symbol in ("AAPL", "IBM")]
    failed, _, _ = insert_request(clean, {"symbol": "NOSUCH", **FAST})
    wait_for_models(clean, [*ids, failed])
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        assert SAMPLE.match(line), line
        name_labels, value = line.rsplit(" ", 1)
        samples[name_labels] = float(value)
    assert samples["sfq_workers"] == 1
    assert any(key.startswith('sfq_worker_heartbeat_age_seconds{host="metrics-host"') for key in samples)
    queued = clean.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'training' AND status = 'succeeded'"
    ).fetchone()[0]
    assert samples['sfq_jobs{queue="training",status="succeeded"}'] == queued
    assert samples['sfq_training_duration_seconds_count{algorithm="Ridge"}'] == 2
    assert samples['sfq_training_duration_seconds_bucket{algorithm="Ridge",le="+Inf"}'] == 2
    assert samples['sfq_models_finished_per_minute{status="failed"}'] > 0
    assert samples['sfq_api_pool_connections{state="max"}'] >= 1

    status = run_sfq("status", url=database).stdout
    assert f"model {failed} NOSUCH" in status and "no bars for NOSUCH" in status


def test_every_log_line_names_host_pid_job_and_model_and_json_on_request(clean, start_worker):
    text = start_worker(1, SFQ_HOSTNAME="log-host")
    model_id, _, _ = insert_request(clean, {"symbol": "AAPL", **FAST})
    text.wait_for_line(rf"job=\d+ model={model_id} INFO job \d+ model {model_id} completed")
    assert re.search(rf"log-host worker-1 \[{text.pid}\] job=\d+ model={model_id} INFO", text.output)

    text.stop()  # the next model must be trained by the JSON-logging worker
    as_json = start_worker(2, SFQ_HOSTNAME="json-host", SFQ_LOG_FORMAT="json")
    other, _, _ = insert_request(clean, {"symbol": "MSFT", **FAST})
    wait_for_models(clean, [other])
    as_json.wait_for_line(rf'"model": {other}, "message": "job \d+ model {other} completed')
    records = [json.loads(line) for line in as_json.output.splitlines() if line.startswith("{")]
    assert records and all(
        {"time", "level", "host", "pid", "job", "model", "message"} <= r.keys() for r in records
    )
    done = [r for r in records if r["model"] == other and "completed" in r["message"]]
    assert done and done[0]["host"] == "json-host" and done[0]["pid"] == as_json.pid and done[0]["job"]
