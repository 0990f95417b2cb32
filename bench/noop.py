"""Scenario 2: queue overhead and pickup latency with no-op jobs.

sfq: a no-op task registered on sfq's own Procrastinate app (queue `training`), run by sfq's worker
daemon code itself (`workers.daemon.serve.run`: its connector, two Procrastinate workers, heartbeat and
rescue loop), started as `python -m bench.noop sfq URL N` because `sfq worker` imports only
workers.daemon.tasks.
Bare: a plain `procrastinate.App(PsycopgConnector)` worker, concurrency 1, LISTEN/NOTIFY on, same
database. Each job appends its id and time.time() at the start of its code to a file; pickup latency is
that minus time.time() when the deferring commit returned (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procrastinate
import psycopg

from bench.common import CORES, Process, percentile, processes
from queue_app import gateway
from queue_app.vocabulary import TRAINING_QUEUE
from workers.daemon.app import app

SFQ_TASK, BARE_TASK, BARE_QUEUE = "bench_noop", "bench_bare_noop", "bench_bare"
_log = None


def _record(job_id: int) -> None:
    global _log
    started = time.time()
    if _log is None:
        _log = open(os.environ["BENCH_NOOP_LOG"], "a", buffering=1)  # noqa: SIM115 (kept open)
    _log.write(f"{job_id} {started:.6f}\n")


@app.task(name=SFQ_TASK, queue=TRAINING_QUEUE, pass_context=True)
async def sfq_noop(context: procrastinate.JobContext) -> None:
    _record(context.job.id)


def _run_bare(url: str) -> None:
    bare = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @bare.task(name=BARE_TASK, queue=BARE_QUEUE, pass_context=True)
    async def bare_noop(context: procrastinate.JobContext) -> None:
        _record(context.job.id)

    async def serve() -> None:
        async with bare.open_async():
            print("bare worker ready", flush=True)
            await bare.run_worker_async(queues=[BARE_QUEUE], concurrency=1, wait=True, listen_notify=True)

    asyncio.run(serve())


def _defer(conn: psycopg.Connection, queue: str, task: str, count: int) -> list[int]:
    """`count` no-op jobs deferred in one statement, as the database's own triggers defer sfq's jobs: a
    plain SQL client statement, the subject of this measurement (not a query of sfq's gateway)."""
    return conn.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY(SELECT ROW(%s, %s, 0, NULL, NULL, '{}'::jsonb, NULL)"
        "::procrastinate_job_to_defer_v1 FROM generate_series(1, %s)))",
        (queue, task, count),
    ).fetchone()[0]


def _starts(path: Path) -> dict[int, float]:
    found = {}
    for line in path.read_text().splitlines():
        job_id, at = line.split()
        found[int(job_id)] = float(at)
    return found


def _wait_done(
    conn: psycopg.Connection, ids: list[int], timeout: float, check: Callable[[], None] | None = None
) -> float:
    """When every job of `ids` is done; `check` (raising when whatever runs them has died) in between."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.run(conn, gateway.jobs_left(ids)) == 0:
            return time.perf_counter()
        if check:
            check()
        time.sleep(0.02)
    raise RuntimeError(f"no-op jobs not done within {timeout} s")


def _measure(url: str, queue: str, task: str, log: Path, jobs: int, samples: int, spacing: float):
    """Throughput of `jobs` deferred at once; then pickup latency of `samples` jobs deferred one by one."""
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        _wait_done(conn, _defer(conn, queue, task, 3), 60)  # warm-up: every worker has fetched once
        t0 = time.perf_counter()
        ids = _defer(conn, queue, task, jobs)
        throughput = jobs / (_wait_done(conn, ids, 600) - t0)
        latencies = pickup_latencies(conn, queue, task, log, samples, spacing, 60)
    return throughput, percentile(latencies, 0.5), percentile(latencies, 0.99)


def pickup_latencies(
    conn: psycopg.Connection, queue: str, task: str, log: Path, samples: int, spacing: float, timeout: float
) -> list[float]:
    """Pickup latency (ms) of `samples` jobs deferred one at a time, `spacing` s apart: each job's start
    (logged by the task) minus the time its deferring commit returned."""
    committed: dict[int, float] = {}
    for _ in range(samples):
        (job_id,) = _defer(conn, queue, task, 1)
        committed[job_id] = time.time()
        time.sleep(spacing)
    _wait_done(conn, list(committed), timeout)
    starts = _starts(log)
    return [(starts[i] - committed[i]) * 1000 for i in committed]


def scenario(url: str, short: bool) -> dict[str, Any]:
    jobs, samples, spacing = (50, 20, 0.03) if short else (1000, 200, 0.05)
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sfq-bench-noop-") as tmp:
        for kind in ("sfq", "bare"):
            log = Path(tmp) / f"{kind}.log"
            log.touch()
            env = {"BENCH_NOOP_LOG": str(log), "POSTGRES_URL": url}
            queue, task = (TRAINING_QUEUE, SFQ_TASK) if kind == "sfq" else (BARE_QUEUE, BARE_TASK)
            ready = r"worker \d+ ready" if kind == "sfq" else "bare worker ready"
            with processes() as started:
                for count in sorted({1, CORES}):
                    while len(started) < count:
                        worker = Process([kind, url, str(len(started) + 1)], env, module="bench.noop")
                        started.append(worker)
                        worker.wait_for_line(ready, timeout=120)
                    time.sleep(0.2 if short else 2)  # LISTEN established, start-up wake-ups done
                    results[(kind, count)] = _measure(url, queue, task, log, jobs, samples, spacing)
    rows = []
    for (kind, count), (throughput, p50, p99) in results.items():
        name = "sfq worker machinery" if kind == "sfq" else "bare Procrastinate"
        rows.append(
            ("no-op", f"{name}, {count} worker(s): throughput ({jobs} jobs)", f"{throughput:.0f} jobs/s")
        )
        rows.append(("no-op", f"{name}, {count} worker(s): pickup p50 / p99", f"{p50:.1f} / {p99:.1f} ms"))
    for count in sorted({1, CORES}):
        ratio = results[("sfq", count)][0] / results[("bare", count)][0]
        rows.append(("no-op", f"ratio throughput sfq / bare, {count} worker(s)", f"{ratio:.3f}"))
    return {
        "rows": rows,
        "data": {f"{kind}_{count}": values for (kind, count), values in results.items()},
    }


if __name__ == "__main__":
    kind, target, instance = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "bare":
        _run_bare(target)
    else:
        from queue_app.config import Settings
        from workers.daemon import serve

        serve.run(instance, target, Settings.from_env())
