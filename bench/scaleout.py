"""Scenario 1: the standard mix of real training jobs run by sfq with 1 worker and with one worker per
core, by an asyncio program over a ProcessPoolExecutor or a ThreadPoolExecutor (the old architecture),
and by Celery (prefork, Redis broker). Same training function, same database."""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from bench import jobs
from bench.common import (
    CORES,
    Process,
    descendants,
    process_cpu_s,
    processes,
    redis_reachable,
    redis_url,
    start_sfq_workers,
    wait_for_models,
)
from queue_app import gateway

WARM_UP = {"symbol": "MSFT", "algorithm": "Ridge", "train_window": 300, "test_window": 60, "cv_folds": 2}
_warm_up_runs = iter(range(1000, 100_000))


def warm_sfq(url: str, daemons: list[Process]) -> None:
    """Steady state before timing: each daemon has run one tiny job, so its training process exists
    (sfq starts it on a daemon's first job, then every SFQ_MAX_JOBS_PER_CHILD jobs; those restarts stay
    in the measurement)."""
    cold = {d.pid for d in daemons}
    for _ in range(10):
        ids = [jobs.submit(url, [WARM_UP], next(_warm_up_runs))[0] for _ in cold]
        wait_for_models(url, ids, 120)
        with gateway.connect(url, "sfq-bench") as conn:
            done = gateway.run(conn, gateway.models_progress(ids))
        cold -= {model["worker_pid"] for model in done}
        if not cold:
            return
    raise RuntimeError(f"sfq daemons {cold} took no warm-up job")


def _tree_cpu_s(daemons: list[Process]) -> float:
    """Daemons, their fork servers and training processes (live ones, and recycled ones reaped into the
    fork server's cutime)."""
    return sum(process_cpu_s(pid) for d in daemons for pid in (d.pid, *descendants(d.pid)))


def measure_sfq(
    url: str, mix: list[dict], run: int, daemons: list[Process], timeout: float
) -> dict[str, Any]:
    """The mix on already started and warmed `sfq worker` daemons, from the enqueueing commit to the
    last model completed."""
    cpu_before = _tree_cpu_s(daemons)
    t0 = time.perf_counter()
    ids = jobs.submit(url, mix, run)
    wall = wait_for_models(url, ids, timeout) - t0
    cpu_after = _tree_cpu_s(daemons)
    with gateway.connect(url, "sfq-bench") as conn:
        rows = gateway.run(conn, gateway.model_timings(ids))
    return {
        "wall": wall,
        "ids": ids,
        "train_s": sum(sum(row["timings"].values()) for row in rows),
        "job_s": sum(row["seconds"] for row in rows),
        "cpu_s": cpu_after - cpu_before,
    }


def run_sfq(url: str, mix: list[dict], run: int, workers: int, timeout: float) -> dict[str, Any]:
    with processes() as started:
        daemons = start_sfq_workers(started, url, workers)
        warm_sfq(url, daemons)
        return measure_sfq(url, mix, run, daemons, timeout)


def start_pool(kind: str, url: str, workers: int = CORES) -> Process:
    return Process([kind, str(workers), url], {}, module="bench.baseline")


def measure_pool(url: str, mix: list[dict], run: int, runner: Process, timeout: float) -> dict[str, Any]:
    runner.wait_for_line(r"^ready$", timeout=120)
    ids = jobs.submit(url, mix, run)
    t0 = time.perf_counter()
    runner.send(",".join(map(str, ids)))
    wall = wait_for_models(url, ids, timeout, runner) - t0
    times = json.loads(runner.wait_for_line(r"^\{.*\}$", timeout=30).group(0))
    return {"wall": wall, "ids": ids, "times": times}


def run_pool(
    url: str, mix: list[dict], run: int, kind: str, timeout: float, workers: int = CORES
) -> dict[str, Any]:
    with processes() as started:
        started.append(start_pool(kind, url, workers))
        return measure_pool(url, mix, run, started[0], timeout)


def start_celery() -> tuple[Process, str]:
    queue = f"sfq-bench-{secrets.token_hex(4)}"
    env = {"BENCH_CELERY_QUEUE": queue, "BENCH_REDIS_URL": redis_url()}
    args = ["-A", "bench.celery_app", "worker", "--pool", "prefork", "-c", str(CORES), "-Q", queue]
    args += ["--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return Process(args, env, module="celery"), queue


def measure_celery(url: str, mix: list[dict], run: int, worker: Process, queue: str, timeout: float):
    os.environ["BENCH_REDIS_URL"] = redis_url()
    from bench.celery_app import celery, train_task

    worker.wait_for_line(r"ready\.", timeout=120)
    ids = jobs.submit(url, mix, run)
    t0 = time.perf_counter()
    for model_id in ids:
        train_task.apply_async((url, model_id), queue=queue)
    wall = wait_for_models(url, ids, timeout, worker) - t0
    with celery.connection_for_write() as connection:
        connection.default_channel.queue_delete(queue)
    import redis  # kombu's bookkeeping keys for the queue

    client = redis.Redis.from_url(redis_url())
    for key in client.scan_iter(f"_kombu.binding*.{queue}"):
        client.delete(key)
    return {"wall": wall, "ids": ids}


def _measure(url: str, short: bool) -> tuple[list, dict[str, Any]]:
    """Every run of the standard mix, one at a time: sfq with 1 and CORES workers, then the baselines."""
    mix = jobs.standard_mix(short)
    timeout = 120 if short else 1800
    with processes() as started:
        # Everything starts at once, before any timing (idle, they take no CPU): then one run at a time.
        daemons = [Process(["worker", "1"], {"POSTGRES_URL": url})]
        process_pool, thread_pool = start_pool("process", url), start_pool("thread", url)
        single_process = start_pool("process", url, 1)
        started += [*daemons, process_pool, thread_pool, single_process]
        celery_worker, queue = start_celery() if redis_reachable() else (None, "")
        started += [celery_worker] if celery_worker else []
        daemons[0].wait_for_line(r"worker \d+ ready", timeout=120)
        warm_sfq(url, daemons)
        one = measure_sfq(url, mix, 1, daemons, timeout)
        sfq_workers = [Process(["worker", str(i)], {"POSTGRES_URL": url}) for i in range(2, CORES + 1)]
        started += sfq_workers
        for worker in sfq_workers:
            worker.wait_for_line(r"worker \d+ ready", timeout=120)
        daemons += sfq_workers
        warm_sfq(url, daemons)
        many = measure_sfq(url, mix, 2, daemons, timeout)
        for (
            daemon
        ) in daemons:  # the baselines' models have Procrastinate jobs too: no sfq worker may run them
            daemon.stop()
        process = measure_pool(url, mix, 3, process_pool, timeout)
        thread = measure_pool(url, mix, 4, thread_pool, timeout)
        celery = measure_celery(url, mix, 5, celery_worker, queue, timeout) if celery_worker else None
        process_one = measure_pool(url, mix, 6, single_process, timeout)
    runs = {"one": one, "many": many, "process": process, "thread": thread, "celery": celery}
    return mix, {**runs, "process_one": process_one}


def scenario(url: str, short: bool) -> dict[str, Any]:
    mix, runs = _measure(url, short)
    one, many, process, thread, celery = (runs[k] for k in ("one", "many", "process", "thread", "celery"))
    process_one = runs["process_one"]
    limit = one["train_s"] / CORES
    rows: list[tuple[str, str, str]] = []

    def fmt(seconds: float) -> str:
        return f"{seconds:.2f} s"

    rows.append(("scale-out", "jobs in the standard mix", str(len(mix))))
    rows.append(("scale-out", "sum of the jobs' training seconds (sfq, 1 worker)", fmt(one["train_s"])))
    rows.append(
        ("scale-out", "CPU seconds of sfq's daemons + training processes (1 worker)", fmt(one["cpu_s"]))
    )
    rows.append(("scale-out", f"physical limit: training seconds / {CORES} cores", fmt(limit)))
    # Whether a job trains slower when every core trains (shared caches, memory bandwidth, hyperthreads):
    # a cost no queue can remove, which caps the efficiency below 1.
    rows.append(
        (
            "scale-out",
            f"sum of the jobs' training seconds (sfq, {CORES} workers) / (1 worker)",
            f"{many['train_s']:.2f} s / {one['train_s']:.2f} s = {many['train_s'] / one['train_s']:.3f}",
        )
    )
    entries = [
        ("(a) sfq, 1 worker", one["wall"], None),
        (f"(b) sfq, {CORES} workers", many["wall"], None),
        (f"(c) asyncio + ProcessPoolExecutor({CORES})", process["wall"], None),
        (f"(d) asyncio + ThreadPoolExecutor({CORES})", thread["wall"], None),
        (f"(e) Celery prefork -c {CORES}, Redis", celery["wall"] if celery else None, "skipped: no Redis"),
    ]
    for name, wall, missing in entries:
        if wall is None:
            rows.append(("scale-out", f"wall time {name}", missing))
            rows.append(("scale-out", f"limit / wall {name}", missing))
            continue
        rows.append(("scale-out", f"wall time {name}", fmt(wall)))
        rows.append(("scale-out", f"limit / wall {name}", f"{limit / wall:.3f}"))
    efficiency = one["wall"] / (CORES * many["wall"])
    pool_efficiency = process_one["wall"] / (CORES * process["wall"])
    rows.append(("scale-out", f"efficiency T(1) / ({CORES} × T({CORES})), sfq", f"{efficiency:.3f}"))
    rows.append(
        (
            "scale-out",
            f"efficiency T(1) / ({CORES} × T({CORES})), ProcessPool (T(1): ProcessPoolExecutor(1), "
            f"{fmt(process_one['wall'])})",
            f"{pool_efficiency:.3f}",
        )
    )
    rows.append(
        ("scale-out", "ratio wall sfq (b) / ProcessPool (c)", f"{many['wall'] / process['wall']:.3f}")
    )
    rows.append(("scale-out", "ratio wall sfq (b) / ThreadPool (d)", f"{many['wall'] / thread['wall']:.3f}"))
    rows.append(
        (
            "scale-out",
            "ratio wall sfq (b) / Celery (e)",
            f"{many['wall'] / celery['wall']:.3f}" if celery else "skipped: no Redis",
        )
    )
    return {
        "rows": rows,
        "data": {
            "efficiency": efficiency,
            "pool_efficiency": pool_efficiency,
            "sfq_over_pool": many["wall"] / process["wall"],
            "sfq_over_celery": many["wall"] / celery["wall"] if celery else None,
            "walls": {name: wall for name, wall, _ in entries},
            "limit": limit,
        },
    }
