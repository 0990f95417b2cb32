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


ROUNDS, SHORT_ROUNDS = 5, 2
# Ratios with a goal (report.goals): the best value is at or beyond the goal on the side the sign says.
GOALS = {"efficiency": (0.95, 1), "sfq_over_pool": (1.0, -1), "sfq_over_celery": (1.0, -1)}


def _sfq_pair(url: str, mix: list[dict], run: int, timeout: float) -> dict[str, dict[str, Any]]:
    """sfq with 1 worker, then with one per core: daemons started and warmed for this round, stopped after
    (no sfq worker runs while a baseline does: the baselines' models have Procrastinate jobs too)."""
    with processes() as started:
        daemons = [Process(["worker", "1"], {"POSTGRES_URL": url})]
        started += daemons
        daemons[0].wait_for_line(r"worker \d+ ready", timeout=120)
        warm_sfq(url, daemons)
        one = measure_sfq(url, mix, run, daemons, timeout)
        more = [Process(["worker", str(i)], {"POSTGRES_URL": url}) for i in range(2, CORES + 1)]
        started += more
        for worker in more:
            worker.wait_for_line(r"worker \d+ ready", timeout=120)
        daemons += more
        warm_sfq(url, daemons)
        return {"one": one, "many": measure_sfq(url, mix, run + 1, daemons, timeout)}


def _baseline(url: str, mix: list[dict], run: int, kind: str, timeout: float) -> dict[str, Any]:
    """One baseline's run, its runner started (and warmed) for it; its models' queue jobs, which no sfq
    worker may take in a later round, cancelled after."""
    with processes() as started:
        if kind == "celery":
            worker, queue = start_celery()
            started.append(worker)
            result = measure_celery(url, mix, run, worker, queue, timeout)
        else:
            runner = start_pool(*(("process", url, 1) if kind == "process_one" else (kind, url)))
            started.append(runner)
            result = measure_pool(url, mix, run, runner, timeout)
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        gateway.run(conn, gateway.cancel_waiting_jobs(result["ids"]))
    return result


def _measure(url: str, short: bool) -> tuple[list, list[dict[str, Any]]]:
    """The standard mix on every runner, round after round, each round in a rotated order (a slow spell of
    the machine falls on different runners): sfq with 1 and CORES workers (one unit), the pools, Celery."""
    mix = jobs.standard_mix(short)
    timeout = 120 if short else 1800
    units = ["sfq", "process", "thread", *(["celery"] if redis_reachable() else []), "process_one"]
    rounds = []
    for number in range(SHORT_ROUNDS if short else ROUNDS):
        shift = number % len(units)
        runs: dict[str, Any] = {"celery": None, "order": units[shift:] + units[:shift]}
        for position, unit in enumerate(runs["order"]):
            run = 10 * (number + 1) + 2 * position + 1  # a new model of the same work every time
            if unit == "sfq":
                runs.update(_sfq_pair(url, mix, run, timeout))
            else:
                runs[unit] = _baseline(url, mix, run, unit, timeout)
        rounds.append(runs)
    return mix, rounds


def _ratios(runs: dict[str, Any]) -> dict[str, float | None]:
    one, many, celery = runs["one"], runs["many"], runs["celery"]
    return {
        "efficiency": one["wall"] / (CORES * many["wall"]),
        "pool_efficiency": runs["process_one"]["wall"] / (CORES * runs["process"]["wall"]),
        "sfq_over_pool": many["wall"] / runs["process"]["wall"],
        "sfq_over_thread": many["wall"] / runs["thread"]["wall"],
        "sfq_over_celery": many["wall"] / celery["wall"] if celery else None,
    }


def spread(values: list[float], goal: tuple[float, int] | None = None) -> dict[str, Any]:
    """Median, min and max of a measure over the rounds; with a goal, whether the spread (max - min) is
    larger than the median's distance to the goal: then one run could land on either side of it."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    found = {"median": median, "min": ordered[0], "max": ordered[-1], "rounds": len(ordered)}
    if goal is not None:
        found["gap"] = abs(median - goal[0])
        found["spread_exceeds_gap"] = ordered[-1] - ordered[0] > found["gap"]
    return found


def describe(found: dict[str, Any], digits: int = 3, unit: str = "") -> str:
    text = (
        f"{found['median']:.{digits}f}{unit} median, {found['min']:.{digits}f}-{found['max']:.{digits}f}"
        f"{unit} over {found['rounds']} rounds"
    )
    if found.get("spread_exceeds_gap"):
        text += f"; the spread is larger than the gap to the goal ({found['gap']:.{digits}f}): unresolved"
    return text


def scenario(url: str, short: bool) -> dict[str, Any]:
    mix, rounds = _measure(url, short)
    first = rounds[0]
    one, many = first["one"], first["many"]
    limit = one["train_s"] / CORES
    rows: list[tuple[str, str, str]] = []

    def fmt(seconds: float) -> str:
        return f"{seconds:.2f} s"

    rows.append(("scale-out", "jobs in the standard mix", str(len(mix))))
    rows.append(("scale-out", "rounds (each runner once a round, the order rotated)", str(len(rounds))))
    rows.append(
        ("scale-out", "sum of the jobs' training seconds (sfq, 1 worker, round 1)", fmt(one["train_s"]))
    )
    rows.append(
        (
            "scale-out",
            "CPU seconds of sfq's daemons + training processes (1 worker, round 1)",
            fmt(one["cpu_s"]),
        )
    )
    rows.append(("scale-out", f"physical limit: training seconds / {CORES} cores (round 1)", fmt(limit)))
    # Whether a job trains slower when every core trains (shared caches, memory bandwidth, hyperthreads):
    # a cost no queue can remove, which caps the efficiency below 1.
    rows.append(
        (
            "scale-out",
            f"sum of the jobs' training seconds (sfq, {CORES} workers) / (1 worker), round 1",
            f"{many['train_s']:.2f} s / {one['train_s']:.2f} s = {many['train_s'] / one['train_s']:.3f}",
        )
    )
    entries = [
        ("(a) sfq, 1 worker", "one"),
        (f"(b) sfq, {CORES} workers", "many"),
        (f"(c) asyncio + ProcessPoolExecutor({CORES})", "process"),
        (f"(d) asyncio + ThreadPoolExecutor({CORES})", "thread"),
        (f"(e) Celery prefork -c {CORES}, Redis", "celery"),
    ]
    walls: dict[str, float | None] = {}
    for name, key in entries:
        if first[key] is None:
            rows.append(("scale-out", f"wall time {name}", "skipped: no Redis"))
            walls[name] = None
            continue
        found = spread([r[key]["wall"] for r in rounds])
        walls[name] = found["median"]
        rows.append(("scale-out", f"wall time {name}", describe(found, 2, " s")))
        rows.append(("scale-out", f"limit / wall {name} (round 1)", f"{limit / first[key]['wall']:.3f}"))
    ratios = [_ratios(r) for r in rounds]
    measured = {
        name: spread([r[name] for r in ratios], GOALS.get(name))
        for name in ratios[0]
        if ratios[0][name] is not None
    }
    labels = {
        "efficiency": f"efficiency T(1) / ({CORES} × T({CORES})), sfq",
        "pool_efficiency": (
            f"efficiency T(1) / ({CORES} × T({CORES})), ProcessPool (T(1): ProcessPoolExecutor(1))"
        ),
        "sfq_over_pool": "ratio wall sfq (b) / ProcessPool (c)",
        "sfq_over_thread": "ratio wall sfq (b) / ThreadPool (d)",
        "sfq_over_celery": "ratio wall sfq (b) / Celery (e)",
    }
    for name, label in labels.items():
        rows.append(
            ("scale-out", label, describe(measured[name]) if name in measured else "skipped: no Redis")
        )
    return {
        "rows": rows,
        "data": {
            "efficiency": measured["efficiency"]["median"],
            "pool_efficiency": measured["pool_efficiency"]["median"],
            "sfq_over_pool": measured["sfq_over_pool"]["median"],
            "sfq_over_celery": measured["sfq_over_celery"]["median"]
            if "sfq_over_celery" in measured
            else None,
            "spreads": measured,
            "orders": [r["order"] for r in rounds],
            "walls": walls,
            "limit": limit,
        },
    }
