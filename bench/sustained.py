"""Scenario: a queue that does not bloat. No-op jobs at the highest rate the machine holds, for
SFQ_BENCH_SUSTAINED_S seconds (default 1800; --short 15), with the workers' retention pruning on
(SFQ_JOB_RETENTION_S=60, the least it takes: jobs are pruned a minute after they finish, every minute).

One sfq worker daemon per core runs bench.noop's no-op task (sfq's own worker machinery: heartbeat,
rescue, pruning); a producer keeps BACKLOG jobs waiting, so the workers never idle. Every SAMPLE_S the
queue tables (and the job counters' changes) total size and their live and dead tuples are read; the chart
(docs/bench-sustained.png) draws them and the rate against time. The tables hold the waiting jobs and
those finished within the last HELD_S (retention, plus up to a minute until the next prune): their size
follows the rate, so bounded means: the largest size per held job (total bytes / (BACKLOG + jobs done in
the last HELD_S)) over the last third of the run is at most 1.25 times the largest over the middle third
(the first third is warm-up). A size per job that grows is bloat; a size that grows with the rate is not.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import CORES, ROOT, Process, new_figure, processes, save_chart
from bench.noop import SFQ_TASK, _defer
from queue_app.vocabulary import TRAINING_QUEUE

TABLES = ("procrastinate_jobs", "procrastinate_events", "sfq_job_count_changes")
BACKLOG, SAMPLE_S, RETENTION_S = 2000, 10, 60
HELD_S = RETENTION_S + 60  # workers/daemon/runtime.py PRUNE_EVERY_S
CHART = ROOT / "docs" / "bench-sustained.png"
BOUND = 1.25


def _produce(url: str, stop: threading.Event, deferred: list[int]) -> None:
    """Keep BACKLOG no-op jobs waiting: each round tops the queue up in one statement."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            (waiting,) = conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND queue_name = %s",
                (TRAINING_QUEUE,),
            ).fetchone()
            if waiting < BACKLOG:
                deferred[0] += len(_defer(conn, TRAINING_QUEUE, SFQ_TASK, BACKLOG - waiting))
            stop.wait(0.05)


def _sample(conn: psycopg.Connection, deferred: int) -> dict[str, Any]:
    """The queue tables' sizes and tuples, and how many jobs are done: deferred less those still open
    (finished ones are pruned, so no count of them is cumulative)."""
    rows = conn.execute(
        "SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup,"
        "       vacuum_count + autovacuum_count FROM pg_stat_user_tables WHERE relname = ANY(%s)",
        (list(TABLES),),
    ).fetchall()
    (open_jobs,) = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND queue_name = %s",
        (TRAINING_QUEUE,),
    ).fetchone()
    return {
        "tables": {
            name: {"bytes": size, "live": live, "dead": dead, "vacuums": vacuums}
            for name, size, live, dead, vacuums in rows
        },
        "done": deferred - open_jobs,
    }


def _chart(samples: list[dict[str, Any]], short: bool) -> str | None:
    minutes = [s["t"] / 60 for s in samples]
    figure, (size_axis, dead_axis, rate_axis) = new_figure(3, figsize=(10, 9), sharex=True)
    for table in TABLES:
        size_axis.plot(minutes, [s["tables"][table]["bytes"] / 2**20 for s in samples], label=table)
        dead_axis.plot(minutes, [s["tables"][table]["dead"] for s in samples], label=table)
    size_axis.plot(minutes, [_total(s) / 2**20 for s in samples], label="all", color="black", linewidth=1)
    size_axis.set_ylabel("total size, MiB (with indexes)")
    size_axis.set_title(f"sfq queue tables under sustained no-op jobs, retention {RETENTION_S} s")
    size_axis.legend(fontsize=8)
    dead_axis.set_ylabel("dead tuples")
    dead_axis.legend(fontsize=8)
    rate_axis.plot(minutes, [_rate(samples, i) for i in range(len(samples))], color="black")
    rate_axis.set_ylabel("no-op jobs/s (last minute)")
    rate_axis.set_xlabel("minutes")
    return save_chart(figure, CHART, short)


def _total(sample: dict[str, Any]) -> int:
    return sum(sample["tables"][t]["bytes"] for t in TABLES)


def _done_since(samples: list[dict[str, Any]], i: int, seconds: float) -> tuple[int, float]:
    """Jobs done over the `seconds` before sample i (or since the start), and over how long."""
    first = next(j for j in range(i + 1) if samples[i]["t"] - samples[j]["t"] <= seconds)
    return samples[i]["done"] - samples[first]["done"], samples[i]["t"] - samples[first]["t"]


def _rate(samples: list[dict[str, Any]], i: int) -> float:
    done, over = _done_since(samples, i, 60)
    return done / over if over else 0.0


def _per_held_job(samples: list[dict[str, Any]], i: int) -> float:
    """Bytes per job the tables hold: waiting ones and those finished within HELD_S."""
    return _total(samples[i]) / (BACKLOG + _done_since(samples, i, HELD_S)[0])


def scenario(url: str, short: bool) -> dict[str, Any]:
    duration = float(os.environ.get("SFQ_BENCH_SUSTAINED_S") or (15 if short else 1800))
    sample_s = 1 if short else SAMPLE_S
    samples: list[dict[str, Any]] = []
    stop, deferred = threading.Event(), [0]
    with tempfile.TemporaryDirectory(prefix="sfq-bench-sustained-") as tmp, processes() as started:
        env = {"BENCH_NOOP_LOG": str(Path(tmp) / "noop.log"), "POSTGRES_URL": url}
        env["SFQ_JOB_RETENTION_S"] = str(RETENTION_S)
        for instance in range(1, CORES + 1):
            worker = Process(["sfq", url, str(instance)], env, module="bench.noop")
            started.append(worker)
            worker.wait_for_line(r"worker \d+ ready", timeout=120)
        producer = threading.Thread(target=_produce, args=(url, stop, deferred), daemon=True)
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.monotonic()
            producer.start()
            while (elapsed := time.monotonic() - start) < duration:
                samples.append({"t": elapsed, **_sample(conn, deferred[0])})
                time.sleep(max(0.0, sample_s - (time.monotonic() - start - elapsed)))
            stop.set()
            producer.join(timeout=30)
            samples.append({"t": time.monotonic() - start, **_sample(conn, deferred[0])})
            (left,) = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
            (autovacuum,) = conn.execute("SHOW autovacuum").fetchone()
    third = len(samples) // 3
    per_job = [_per_held_job(samples, i) for i in range(len(samples))]
    peak_middle, peak_last = max(per_job[third : 2 * third]), max(per_job[2 * third :])
    rate = (samples[-1]["done"] - samples[0]["done"]) / (samples[-1]["t"] - samples[0]["t"])
    bounded = peak_last <= BOUND * peak_middle
    rows = [
        (
            "sustained",
            "duration, no-op jobs done",
            f"{samples[-1]['t'] / 60:.1f} min, {samples[-1]['done']:,}",
        ),
        ("sustained", "rate (workers never idle)", f"{rate:.0f} jobs/s"),
    ]
    vacuums = (
        samples[-1]["tables"]["procrastinate_jobs"]["vacuums"]
        - samples[0]["tables"]["procrastinate_jobs"]["vacuums"]
    )
    rows.append(
        (
            "sustained",
            "server's autovacuum; VACUUMs of procrastinate_jobs in the run",
            f"{autovacuum}; {vacuums}",
        )
    )
    for table in TABLES:
        sizes = [s["tables"][table]["bytes"] / 2**20 for s in samples]
        dead = [s["tables"][table]["dead"] for s in samples]
        rows.append(
            (
                "sustained",
                f"{table}: size start / end / max (MiB); dead tuples end / max",
                f"{sizes[0]:.1f} / {sizes[-1]:.1f} / {max(sizes):.1f}; {dead[-1]:,} / {max(dead):,}",
            )
        )
    rows.append(
        (
            "sustained",
            f"bounded: peak bytes per held job last third <= {BOUND} x middle third",
            f"{'yes' if bounded else 'NO'} ({peak_last:,.0f} vs {peak_middle:,.0f} B)",
        )
    )
    return {
        "rows": rows,
        "data": {
            "duration_s": duration,
            "retention_s": RETENTION_S,
            "rate": rate,
            "jobs_left": left,
            "bounded": bounded,
            "samples": samples,
            "chart": _chart(samples, short),
        },
    }
