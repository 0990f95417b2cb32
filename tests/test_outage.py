"""PostgreSQL restarting while a model trains: workers and API reconnect, the result is written once."""

from __future__ import annotations

import time

import httpx
import psycopg

from queue_app import embedded
from tests.conftest import SLOW, Process, insert_request, wait_for_jobs, wait_for_models

QUICK = {"SFQ_HEARTBEAT_S": "1", "SFQ_RESCUE_AFTER_S": "5", "SFQ_POLL_INTERVAL_S": "2"}


def test_database_restart_while_training(private_cluster, start_api):
    home, url = private_cluster
    fleet = Process(["workers", "--count", "1"], {"POSTGRES_URL": url, **QUICK})
    try:
        fleet.wait_for_line(r"worker 1 ready")
        api = start_api(url)
        with psycopg.connect(url, autocommit=True) as conn:
            model_id, _, _ = insert_request(conn, {"symbol": "AAPL", **SLOW})
        fleet.wait_for_line(rf"model {model_id} starting")

        embedded.stop(home)
        with httpx.Client(base_url=api, timeout=10) as client:
            away = [client.get("/healthz"), client.post("/train", json={"symbol": "MSFT"})]
            assert [r.status_code for r in away] == [503, 503]
            assert {r.json()["error"] for r in away} == {"database unavailable"}
            time.sleep(2)
            embedded.ensure_running(home, quiet=True)
            back = time.monotonic()
            while client.get("/healthz").status_code != 200:
                assert time.monotonic() - back < 15, "the API did not recover within 15 s"
                time.sleep(0.2)
            print(f"API healthy again {time.monotonic() - back:.1f} s after the database came back")
            assert (
                client.post(
                    "/train",
                    json={"symbol": "MSFT", "algorithm": "Ridge", "train_window": 300, "test_window": 60},
                ).status_code
                == 201
            )

        with psycopg.connect(url, autocommit=True) as conn:
            model = wait_for_models(conn, [model_id], timeout=180)[model_id]
            assert model["status"] == "completed", model  # written after the restart, or retried
            wait_for_jobs(conn, timeout=60)
            completed_attempts, features = conn.execute(
                "SELECT (SELECT count(*) FROM model_attempts"
                " WHERE model_id = %(m)s AND outcome = 'completed'),"
                " (SELECT count(*) FROM features_log WHERE model_id = %(m)s)",
                {"m": model_id},
            ).fetchone()
            assert (completed_attempts, features) == (1, 13)
            assert conn.execute("SELECT count(*) FROM models WHERE status = 'running'").fetchone()[0] == 0
    finally:
        fleet.stop()
