"""Chaos: jobs on several workers, a random busy worker SIGKILLed every few seconds, PostgreSQL restarted
once in the middle. Every model must end `completed`, its result written exactly once.

The main suite runs a short version (SFQ_CHAOS_JOBS, default 20); the full one is
`SFQ_CHAOS_JOBS=200 scripts/test tests/test_chaos.py -s` (see the README).
"""

from __future__ import annotations

import os
import random
import signal
import time

import psycopg
import pytest

from queue_app import embedded
from tests.conftest import Process, insert_request, wait_for_jobs

JOBS = int(os.environ.get("SFQ_CHAOS_JOBS", "20"))
WORKERS = 3
KILL_EVERY_S = 4.0
FIRST_KILL_S = 1.0
STALL_S = 120  # no model completed for this long: the run is stuck
ENV = {
    "SFQ_HEARTBEAT_S": "1",
    "SFQ_RESCUE_AFTER_S": "3",
    "SFQ_POLL_INTERVAL_S": "2",
    "SFQ_MAX_ATTEMPTS": "50",  # kills are frequent here: never give up on a model
    "SFQ_MAX_JOBS_PER_CHILD": "25",
}


def _requests(count: int) -> list[dict]:
    """Distinct specs of about a second each: linear models on varied windows, and small forests."""
    specs = []
    for i in range(count):
        symbol = ("AAPL", "MSFT")[i % 2]
        if i % 4 == 3:
            specs.append(
                {
                    "symbol": symbol,
                    "algorithm": "RandomForest",
                    "train_window": 400 + i,
                    "test_window": 100,
                    "hyperparameters": '{"n_estimators": 30, "min_samples_leaf": 5}',
                }
            )
        else:
            specs.append(
                {
                    "symbol": symbol,
                    "algorithm": ("Ridge", "LinearRegression", "ElasticNet")[i % 3],
                    "train_window": 300 + i,
                    "test_window": 100,
                }
            )
    return specs


READY = " ready in process "  # a worker daemon's log: "worker N ready in process PID on HOST (...)"


def worker_pids(supervisor_pid: int) -> list[int]:
    """The live worker daemons: the supervisor's children."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or gone
            continue
        if fields[0] != "Z" and int(fields[1]) == supervisor_pid:
            pids.append(int(entry))
    return pids


def _status(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT status::text, count(*) FROM models GROUP BY 1").fetchall())


@pytest.mark.chaos
@pytest.mark.timeout(120 + JOBS * 15)  # the suite's 300 s, or more for a longer run or a loaded machine
def test_chaos_every_model_completes_exactly_once(private_cluster):
    home, url = private_cluster
    rng = random.Random(7)
    fleet = Process(["workers", "--count", str(WORKERS)], {"POSTGRES_URL": url, **ENV})
    kills: dict[int, float] = {}  # model id -> when its worker was killed (the last time)
    kill_count = restarted_db = 0
    ready: set[int] = set()  # worker daemons that logged "worker N ready in process PID"
    read_lines = 0
    started = time.monotonic()
    try:
        fleet.wait_for_line(rf"worker {WORKERS} ready")
        with psycopg.connect(url, autocommit=True) as conn:
            model_ids = [insert_request(conn, spec)[0] for spec in _requests(JOBS)]
        progressed_at, completed = time.monotonic(), 0
        next_kill = time.monotonic() + FIRST_KILL_S  # the short run's jobs may all be done within 4 s
        while True:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                    status = _status(conn)
                    busy = dict(
                        conn.execute("SELECT worker_pid, id FROM models WHERE status = 'running'").fetchall()
                    )
            except psycopg.OperationalError:
                time.sleep(0.5)
                continue
            if status.get("queued", 0) + status.get("running", 0) == 0:
                break
            if status.get("completed", 0) > completed:
                progressed_at, completed = time.monotonic(), status.get("completed", 0)
            assert time.monotonic() - progressed_at < STALL_S, (
                f"no model completed for {STALL_S} s: {status}\n{fleet.output[-6000:]}"
            )
            if not restarted_db and status.get("completed", 0) >= JOBS // 2:
                embedded.stop(home)  # PostgreSQL restarts in the middle of the run
                time.sleep(1)
                embedded.ensure_running(home, quiet=True)
                restarted_db = 1
            # Only a worker that says it is ready is killed, and only while another ready one goes on:
            # a restarted worker takes a while to start (its fork server imports scikit-learn), on a
            # loaded machine longer than KILL_EVERY_S, and killing workers still starting left none
            # to train (no progress in 140 s).
            new_lines = fleet.lines[read_lines:]
            read_lines += len(new_lines)
            ready |= {int(line.split(READY, 1)[1].split()[0]) for line in new_lines if READY in line}
            live = sorted(set(worker_pids(fleet.pid)) & ready)
            # A random worker, busy or idle; the first kill takes a busy one, so something is rescued.
            targets = sorted(set(live) & set(busy)) if not kill_count and busy else live
            if time.monotonic() >= next_kill and len(live) >= 2 and targets:
                pid = rng.choice(targets)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kill_count += 1
                    if pid in busy:
                        kills[busy[pid]] = time.time()
                except ProcessLookupError:
                    pass
                next_kill = time.monotonic() + KILL_EVERY_S
            time.sleep(0.2)
        elapsed = time.monotonic() - started

        with psycopg.connect(url, autocommit=True) as conn:
            try:
                wait_for_jobs(conn, timeout=60)
            except AssertionError as stuck:
                raise AssertionError(f"{stuck}\n{fleet.output[-12000:]}") from None
            written = dict(
                conn.execute(
                    "SELECT model_id, count(*) FROM model_attempts WHERE outcome = 'completed' GROUP BY 1"
                ).fetchall()
            )
            features = dict(conn.execute("SELECT model_id, count(*) FROM features_log GROUP BY 1").fetchall())
            artifacts = conn.execute(
                "SELECT count(*), count(DISTINCT model_id) FROM model_artifacts"
            ).fetchone()
            outcomes = dict(
                conn.execute("SELECT outcome, count(*) FROM model_attempts GROUP BY 1").fetchall()
            )
            lost_at = conn.execute(
                "SELECT model_id, extract(epoch FROM ended_at) FROM model_attempts WHERE outcome = 'lost'"
            ).fetchall()
            doing = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'").fetchone()[
                0
            ]
            unfinished = conn.execute(
                "SELECT id, status::text, error FROM models WHERE status <> 'completed'"
            ).fetchall()
    finally:
        fleet.stop(timeout=90)

    assert unfinished == [] and doing == 0
    assert written == {model_id: 1 for model_id in model_ids}  # each result written exactly once
    assert features == {model_id: 13 for model_id in model_ids}
    assert artifacts == (JOBS, JOBS)
    delays = [float(at) - kills[m] for m, at in lost_at if m in kills and float(at) >= kills[m]]
    print(
        f"\nchaos: {JOBS} models on {WORKERS} workers in {elapsed:.0f} s; {kill_count} workers killed, "
        f"{outcomes.get('lost', 0)} attempts rescued, {outcomes.get('requeued', 0)} requeued, "
        f"{outcomes.get('failed', 0)} failed attempts, PostgreSQL restarted {restarted_db} time(s); "
        f"longest rescue delay {max(delays, default=0):.1f} s (heartbeat 1 s, rescue after 3 s)"
    )
    assert kill_count > 0
