"""Scenario: a fleet of worker daemons against one PostgreSQL (issue 15 part 4): 50, 100, 200 and 500
daemons (--short: 4 and 8), LISTEN/NOTIFY, SFQ_HEARTBEAT_S and SFQ_RESCUE_AFTER_S at their defaults
(--short: 1 and 3 s, so that a rescue fits in seconds). SFQ_BENCH_FLEET_SIZES=500 runs the sizes given
(docs/bench-fleet.png is then left as it is). With SFQ_POOLER=transaction the daemons poll (every
SFQ_POLL_INTERVAL_S, 1 s by default, or the fleet's size times SFQ_POLL_GAP_S if longer) through a
PgBouncer of the scenario's own in transaction mode
(bench.pooler: POOL_SIZE server connections), and the chart is docs/bench-fleet-pgbouncer.png.

Each daemon is sfq's own (workers.daemon.serve: its connector and two connections, its two Procrastinate
workers, its heartbeat and rescue loop); several share a process (`python -m bench.fleet FIRST COUNT`),
each with its own connections, and none has a training process: `HeldTrainer` stands in for it. The
fleet's jobs are bench.noop's no-op task, and, for the rescue, real sfq training jobs whose trainer holds
them until the bench releases their process.

The database is a private cluster (queue_app.embedded) started for the scenario in a temporary folder:
500 daemons hold 1,000 to 1,500 connections, ten times the shared server's max_connections. It has
pg_stat_statements, which counts the queries. The server's database the scenario is given is not used.

Per fleet size, on a fresh copy of the schema:
- idle database CPU: utime + stime of the postmaster and all its children (/proc) over IDLE_S with no
  job, as a share of one core, and per daemon (PgBouncer's, when there is one, apart); the queries per
  second in that window;
- pickup latency: SAMPLES no-op jobs deferred one at a time, SPACING_S apart, while the fleet idles;
  the time.time() at the task's start minus the one when the deferring commit returned (bench.noop);
- jobs/s: BURST_PER_DAEMON no-op jobs per daemon (at least BURST_MIN) deferred in one statement,
  drained by the fleet;
- the NOTIFY herd: fetch queries (sfq_fetch_job, or procrastinate_fetch_job_v2 when polling) per job
  in the pickup phase, less the idle window's rate of polls over its length;
- rescue: every daemon holds a training job; the processes holding a tenth of the daemons are killed
  with SIGKILL at once and the others released; the time until every job of the dead daemons has been
  taken up again (its model's next attempt started, after sfq_rescue_stalled_jobs handed it on), as a
  multiple of SFQ_RESCUE_AFTER_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ROOT, Databases, Process, children, percentile, process_cpu_s
from bench.jobs import submit
from bench.noop import SFQ_TASK, _defer, _wait_done, pickup_latencies
from bench.pooler import Bouncer, pgbouncer
from queue_app import embedded
from queue_app.vocabulary import TRAINING_QUEUE
from workers.daemon.outcome import Outcome, Pruned, Retry

SIZES, SHORT_SIZES = (50, 100, 200, 500), (4, 8)
PER_PROCESS = 25  # daemons per process at most
IDLE_S, SAMPLES, SPACING_S = 30, 200, 0.2
BURST_PER_DAEMON, BURST_MIN = 4, 1000
HOLD_WAIT_S = 120  # for the daemons to be killed to hold a training job each
SHORT_SETTINGS = {"SFQ_HEARTBEAT_S": "1", "SFQ_RESCUE_AFTER_S": "3"}
SERVER = {"max_connections": "1700", "shared_preload_libraries": "pg_stat_statements"}
# PgBouncer's server connections to the fleet's database (its default_pool_size); SFQ_BENCH_FLEET_POOL_SIZE
# to compare others.
POOL_SIZE = int(os.environ.get("SFQ_BENCH_FLEET_POOL_SIZE", "50"))
# A worker's fetch: a listening daemon's sfq_fetch_job (0026), or Procrastinate's own when polling.
FETCH = r"(sfq_fetch_job|procrastinate_fetch_job_v\d+)\("
REQUEST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60, "cv_folds": 2}
# The full run's chart, by the way the daemons reach PostgreSQL: directly, listening, or through PgBouncer.
CHARTS = {False: ROOT / "docs" / "bench-fleet.png", True: ROOT / "docs" / "bench-fleet-pgbouncer.png"}
GOAL_SIZE, GOAL_P99_MS, GOAL_RESCUE_X, GOAL_IDLE_CPU = 500, 100, 2, 10  # issue 15


class HeldTrainer:
    """A daemon's trainer that trains nothing: a model's job is held until `released` (the line
    `release` on the process's stdin), then ends as Pruned (the model cancelled, saying why: the
    quietest end that needs no training result); at a shutdown, the job goes back to the queue, as the
    training process's would."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.interrupted: str | None = None

    def ensure_started(self) -> int:
        return os.getpid()

    async def train(self, *job: Any, **callbacks: Any) -> Outcome:
        await self.released.wait()
        if self.interrupted:
            return Retry(f"interrupted: {self.interrupted}", at_once=True)
        return Pruned("released by the fleet benchmark", [])

    def interrupt(self, reason: str) -> None:
        self.interrupted = reason
        self.released.set()

    def close(self) -> None:
        pass


async def _serve_fleet(first: int, count: int) -> bool:
    """Daemons first..first+count-1 in this process until a signal; `release` on stdin releases every
    held job (a thread reads it: a daemon thread, so that a blocked read never holds up the exit)."""
    from queue_app.config import Settings, database_url
    from workers.daemon import logs, serve
    from workers.daemon.runtime import Runtime

    settings = Settings.from_env()
    logs.configure(settings.hostname, first, settings.log_json)
    trainers = [HeldTrainer() for _ in range(count)]
    loop, url = asyncio.get_running_loop(), database_url(settings)

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip() == "release":
                for trainer in trainers:
                    loop.call_soon_threadsafe(trainer.released.set)

    threading.Thread(target=read_commands, daemon=True).start()
    return await serve.serve([Runtime(url, first + i, settings, t) for i, t in enumerate(trainers)])


def _layout(size: int) -> tuple[int, int]:
    """(processes, daemons in each): a multiple of ten processes, so that killing a tenth of them kills
    10% of the daemons; a tiny fleet (--short) runs in two, and one is killed."""
    if size < 10:
        return 2, size // 2
    processes = 10 * math.ceil(size / (10 * PER_PROCESS))
    assert size % processes == 0, size
    return processes, size // processes


class _Counters:
    """What the cluster has spent: CPU seconds (/proc: the postmaster, with its reaped children, and every
    live child) and statements (pg_stat_statements, every database), read on a connection of its own."""

    def __init__(self, server_url: str, pooler: Bouncer | None):
        self.pooler = pooler
        self.conn = psycopg.connect(server_url, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        (backend,) = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        self.postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in [self.postmaster, *children(self.postmaster)])

    def pooler_cpu_s(self) -> float:
        return process_cpu_s(self.pooler.pid) if self.pooler else 0.0

    def by_statement(self) -> dict[str, int]:
        """Calls so far of each statement (its text's first words), every database."""
        return dict(
            self.conn.execute(
                "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 48), sum(calls)::bigint"
                " FROM pg_stat_statements GROUP BY 1"
            ).fetchall()
        )

    def calls(self) -> tuple[int, int]:
        """(all statements, fetches) counted so far."""
        return self.conn.execute(
            "SELECT coalesce(sum(calls), 0)::bigint,"
            "       coalesce(sum(calls) FILTER (WHERE query ~ %s), 0)::bigint FROM pg_stat_statements",
            (FETCH,),
        ).fetchone()


def _start(url: str, size: int, env: dict[str, str]) -> list[Process]:
    processes, each = _layout(size)
    fleet = [
        Process([str(1 + i * each), str(each)], {"POSTGRES_URL": url, **env}, module="bench.fleet")
        for i in range(processes)
    ]
    try:
        for i, process in enumerate(fleet):
            process.wait_for_line(rf"worker {(i + 1) * each} ready ", timeout=600)
    except BaseException:  # the ones that did start must not run on against the next size
        _stop(fleet)
        raise
    return fleet


def _alive(fleet: list[Process], phase: str) -> None:
    """Every process of the fleet still runs, or the figures are not the whole fleet's: which one stopped
    (a daemon whose worker stops on its own stops its process: serve._run_until_signalled), and why."""
    for process in fleet:
        if process.popen.poll() is not None:
            first, count = process.popen.args[-2:]
            raise RuntimeError(
                f"after {phase}: the process of daemons {first}+{count} exited ({process.popen.returncode}): "
                + " / ".join(line for line in process.lines if "ERROR" in line or "Error" in line)[-600:]
            )


def _stop(fleet: list[Process], grace_s: float = 30) -> None:
    """SIGTERM to every process at once, SIGKILL to those still there `grace_s` later (each waited for
    in turn, with its own timeout, took minutes at 500)."""
    for process in fleet:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in fleet:
        process.stop(timeout=max(0.1, deadline - time.monotonic()))


def _idle(
    conn: psycopg.Connection, counters: _Counters, fleet: list[Process], seconds: float
) -> dict[str, float]:
    """The idle fleet's costs over `seconds`, and the oldest heartbeat seen in them (read every second):
    a daemon's event loop that falls behind is seen there first."""
    cpu, pooler, python = counters.cpu_s(), counters.pooler_cpu_s(), _python_cpu_s(fleet)
    calls, fetches = counters.calls()
    statements = counters.by_statement()
    start, oldest = time.monotonic(), 0.0
    while (elapsed := time.monotonic() - start) < seconds:
        (age,) = conn.execute(
            "SELECT extract(epoch FROM now() - min(last_heartbeat))::float8 FROM procrastinate_workers"
        ).fetchone()
        oldest = max(oldest, age)
        time.sleep(min(1.0, seconds - elapsed))
    elapsed = time.monotonic() - start
    cpu, pooler = counters.cpu_s() - cpu, counters.pooler_cpu_s() - pooler
    python = _python_cpu_s(fleet) - python
    after = counters.calls()
    rates = {q: (n - statements.get(q, 0)) / elapsed for q, n in counters.by_statement().items()}
    (connections,) = counters.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    ).fetchone()
    return {
        "seconds": elapsed,
        "cpu_pct": 100 * cpu / elapsed,
        "pooler_cpu_pct": 100 * pooler / elapsed,
        "fleet_cpu_pct": 100 * python / elapsed,
        "queries_per_s": (after[0] - calls) / elapsed,
        "polls_per_s": (after[1] - fetches) / elapsed,
        "connections": connections,
        "oldest_heartbeat_s": oldest,
        "top_statements": sorted(rates.items(), key=lambda item: -item[1])[:6],
    }


def _python_cpu_s(fleet: list[Process]) -> float:
    return sum(process_cpu_s(p.pid) for p in fleet)


def _pickups(
    conn: psycopg.Connection,
    counters: _Counters,
    log: Path,
    samples: int,
    spacing: float,
    polls_per_s: float,
    poll_s: float,
):
    """Latencies (ms) of `samples` jobs deferred one at a time, and fetches per job: all of them less the
    idle polls. Each daemon's two workers poll every SFQ_POLL_INTERVAL_S while idle (the idle window's
    rate); since 0028 a training job's notification wakes one training worker, and the others poll on as
    while idle. (Before 0028 it woke every daemon's training worker, whose wake restarted its poll timer:
    with a job every `spacing` s only the side-queue workers' half of the polls went on, and that half
    was subtracted.) The window is a whole number of poll intervals, as the idle one is: when a worker's
    polls came at the same phase every interval (before 52b373b spread them), a window of 1.5 intervals
    counted from 1 to 2 polls a worker (0 to 5 fetches a job at 500 daemons, 2026-12-03); spread, whole
    intervals still count each worker's polls over the same span as the idle rate does."""
    _, fetches = counters.calls()
    start = time.monotonic()
    latencies = pickup_latencies(conn, TRAINING_QUEUE, SFQ_TASK, log, samples, spacing, 120)
    if poll_s:
        elapsed = time.monotonic() - start
        time.sleep(max(0.0, math.ceil(elapsed / poll_s) * poll_s - elapsed))
    elapsed = time.monotonic() - start
    herd = (counters.calls()[1] - fetches - polls_per_s * elapsed) / samples
    return latencies, herd


# The training jobs the processes' daemons are running and have started their models' attempts for
# (start_model: the model's worker_pid is theirs), with the attempts so far.
HELD = """
SELECT j.id, m.id, m.attempts
  FROM procrastinate_jobs j JOIN sfq_workers w ON w.worker_id = j.worker_id
  JOIN models m ON m.job_id = j.id AND m.status = 'running' AND m.worker_pid = w.pid
 WHERE j.status = 'doing' AND j.task_name = 'train_model' AND w.pid = ANY(%s)
"""
LOST = "SELECT count(*) FROM model_attempts WHERE outcome = 'lost'"


def _rescue(
    url: str, conn: psycopg.Connection, fleet: list[Process], size: int, rescue_after_s: int
) -> dict[str, Any]:
    """Every daemon is given a training job to hold; once each holds one (or after HOLD_WAIT_S, with what
    they hold), the first tenth of the processes is killed and the others released: the seconds from the
    kill until each of the dead daemons' jobs was taken up again (its model's next attempt started). A
    live daemon whose heartbeat came later than SFQ_RESCUE_AFTER_S had its job handed on too: counted,
    as `lost_before_kill`."""
    doomed = fleet[: max(1, len(fleet) // 10)]
    pids = [p.pid for p in doomed]
    submit(url, [{**REQUEST, "run": run} for run in range(1, size + 1)])
    deadline = time.monotonic() + HOLD_WAIT_S
    running = 0
    while running < size and time.monotonic() < deadline:
        time.sleep(0.1)
        (running,) = conn.execute(
            "SELECT count(*) FROM models m JOIN sfq_workers w ON w.pid = m.worker_pid"
            " JOIN procrastinate_jobs j ON j.id = m.job_id AND j.worker_id = w.worker_id"
            " WHERE m.status = 'running' AND j.status = 'doing'"
        ).fetchone()
    _alive(fleet, "the training jobs' start")
    (lost,) = conn.execute(LOST).fetchone()
    for process in doomed:
        os.kill(process.pid, signal.SIGKILL)
    killed = time.monotonic()
    held = conn.execute(HELD, (pids,)).fetchall()  # what they held when they died
    for process in fleet[len(doomed) :]:
        process.send("release")
    attempts = {model_id: attempt for _, model_id, attempt in held}
    taken: dict[int, float] = {}
    failed: set[int] = set()  # lost SFQ_MAX_ATTEMPTS times (late heartbeats, then the kill): not retried
    while len(taken) + len(failed) < len(attempts):
        if time.monotonic() - killed > 10 * rescue_after_s:
            raise RuntimeError(f"{len(attempts) - len(taken)} of {len(attempts)} jobs not taken up again")
        for model_id, attempt, status in conn.execute(
            "SELECT id, attempts, status::text FROM models WHERE id = ANY(%s)", (list(attempts),)
        ):
            if attempt > attempts[model_id]:
                taken.setdefault(model_id, time.monotonic() - killed)
            elif status == "failed":
                failed.add(model_id)
        time.sleep(0.05)
    return {
        "daemons_killed": size // len(fleet) * len(doomed),
        "killed": len(attempts),
        "running_at_kill": running,
        "lost_before_kill": lost,
        "failed": len(failed),
        "first_s": min(taken.values(), default=math.nan),
        "all_s": max(taken.values(), default=math.nan),
    }


def _measure(
    url: str, size: int, short: bool, settings: dict[str, str], counters: _Counters, measured: dict[str, Any]
) -> dict[str, Any]:
    """The size's figures; `measured` holds those of the phases done so far, for when a later one fails."""
    samples, spacing = (20, 0.05) if short else (SAMPLES, SPACING_S)
    burst = 50 if short else max(BURST_MIN, BURST_PER_DAEMON * size)
    with tempfile.TemporaryDirectory(prefix="sfq-bench-fleet-") as tmp:
        log = Path(tmp) / "noop.log"
        log.touch()
        daemons_url = counters.pooler.url(url) if counters.pooler else url
        fleet = _start(daemons_url, size, {"BENCH_NOOP_LOG": str(log), **settings})
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                alive = functools.partial(_alive, fleet, "a wait for jobs")
                warm_up = _defer(conn, TRAINING_QUEUE, SFQ_TASK, 3)  # done once every daemon has fetched
                _wait_done(conn, warm_up, 120, alive)
                time.sleep(2 * int(settings["SFQ_HEARTBEAT_S"]))  # start-up over: wakes, first beats
                _alive(fleet, "start")
                # The daemons' mean wait at this size (0, short: no whole polls)
                poll_s = _interval_for(settings, size) if "SFQ_POLL_INTERVAL_S" in settings else 0.0
                idle_s = poll_s * math.ceil(IDLE_S / poll_s) if poll_s else 3  # whole polls, as below
                idle = _idle(conn, counters, fleet, idle_s)
                measured.update(idle)
                _alive(fleet, "idle")
                latencies, herd = _pickups(conn, counters, log, samples, spacing, idle["polls_per_s"], poll_s)
                measured.update(
                    p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99), herd=herd
                )
                _alive(fleet, "pickups")
                start = time.perf_counter()
                throughput = burst / (
                    _wait_done(conn, _defer(conn, TRAINING_QUEUE, SFQ_TASK, burst), 600, alive) - start
                )
                _alive(fleet, "burst")
                rescue = _rescue(url, conn, fleet, size, int(settings["SFQ_RESCUE_AFTER_S"]))
        finally:
            _stop(fleet)
    return {
        "processes": len(fleet),
        **idle,
        "samples": samples,
        "spacing_s": spacing,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "burst": burst,
        "jobs_per_s": throughput,
        "herd": herd,
        **{f"rescue_{key}": value for key, value in rescue.items()},
    }


def _chart(
    results: dict[int, dict[str, Any]], rescue_after_s: int, polling: dict[str, str] | None, output: Path
) -> None:
    """The measures against the fleet's size; polling with the settings `polling` (None: listening),
    with PgBouncer's CPU and the mean wait of spread polls (interval / N: SpreadPollingWorker)."""
    poll_s = float(polling["SFQ_POLL_INTERVAL_S"]) if polling else None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    figure, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panels = [
        ("pickup latency, ms (idle fleet)", [("p50", "p50_ms"), ("p99", "p99_ms")], GOAL_P99_MS),
        ("no-op jobs/s (a burst)", [("jobs/s", "jobs_per_s")], None),
        (
            "idle database CPU, % of a core",
            [("all daemons", "cpu_pct")] + [("PgBouncer", "pooler_cpu_pct")] * (poll_s is not None),
            GOAL_IDLE_CPU,
        ),
        ("idle queries/s", [("queries/s", "queries_per_s")], None),
        (
            "fetches per job, less the idle polls (no NOTIFY)" if poll_s else "NOTIFY herd: fetches per job",
            [("fetches per job", "herd")],
            None,
        ),
        (
            f"rescue, multiples of SFQ_RESCUE_AFTER_S = {rescue_after_s} s",
            [("all taken up", "rescue_all_s"), ("first taken up", "rescue_first_s")],
            GOAL_RESCUE_X,
        ),
    ]
    for axis, (title, lines, goal) in zip(axes.flat, panels, strict=True):
        for label, key in lines:
            scale = rescue_after_s if key.startswith("rescue") else 1
            axis.plot(sizes, [results[n][key] / scale for n in sizes], marker="o", label=label)
        if goal is not None:
            axis.axhline(goal, color="red", linestyle="--", linewidth=1, label=f"goal at 500: {goal}")
        if title.startswith("NOTIFY"):
            axis.plot(sizes, sizes, color="grey", linestyle=":", linewidth=1, label="one per daemon")
        if title.startswith("pickup") and poll_s:
            mean_ms = [1000 * _interval_for(polling, n) / n for n in sizes]
            axis.plot(sizes, mean_ms, color="grey", linestyle=":", linewidth=1, label="interval / N (mean)")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("daemons")
        axis.set_xticks(sizes)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    way = (
        f"polling every {poll_s:g} s or N x {polling['SFQ_POLL_GAP_S']} s through PgBouncer"
        if polling
        else "LISTEN/NOTIFY"
    )
    figure.suptitle(f"sfq worker daemons against one PostgreSQL ({way}, no-op jobs)")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def _settings() -> dict[str, str]:
    """The daemons' heartbeat, rescue threshold, poll and pooler: sfq's defaults (queue_app/config.py), or
    this process's SFQ_HEARTBEAT_S, SFQ_RESCUE_AFTER_S, SFQ_POLL_INTERVAL_S and SFQ_POOLER to compare
    others; stated."""
    from queue_app.config import Settings

    settings = Settings.from_env()
    return {
        "SFQ_HEARTBEAT_S": str(settings.heartbeat_s),
        "SFQ_RESCUE_AFTER_S": str(settings.rescue_after_s),
        "SFQ_POLL_INTERVAL_S": f"{settings.poll_interval_s:g}",
        "SFQ_POLL_GAP_S": f"{settings.poll_gap_s:g}",
        "SFQ_POOLER": settings.pooler,
    }


def _interval_for(settings: dict[str, str], daemons: int) -> float:
    """An idle worker's mean wait in a fleet of `daemons` under these settings (Runtime.pace's rule)."""
    from queue_app.config import Settings

    chosen = dataclasses.replace(
        Settings.from_env(),
        poll_interval_s=float(settings["SFQ_POLL_INTERVAL_S"]),
        poll_gap_s=float(settings.get("SFQ_POLL_GAP_S", 0)),
    )
    return chosen.poll_interval_for(daemons)


def scenario(url: str, short: bool) -> dict[str, Any]:
    from queue_app.config import POOLERS

    del url  # the fleet needs more connections than the shared server has: a private cluster
    chosen_settings = _settings()
    short_settings = {**SHORT_SETTINGS, "SFQ_POOLER": chosen_settings["SFQ_POOLER"]}
    sizes, settings = (SHORT_SIZES, short_settings) if short else (SIZES, chosen_settings)
    chosen = os.environ.get("SFQ_BENCH_FLEET_SIZES")  # e.g. "500": one size again, its chart not kept
    sizes = tuple(int(size) for size in chosen.split(",")) if chosen else sizes
    rescue_after_s = int(settings["SFQ_RESCUE_AFTER_S"])
    pooled = not POOLERS[settings["SFQ_POOLER"]].listen  # behind a transaction pooler: polling
    # The polls' settings, the short run's too (its settings leave the daemons' own): the chart's.
    polling = chosen_settings if pooled else None
    results: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="sfq-bench-fleet-pg-") as home:
        os.chmod(home, 0o755)  # run as root, PostgreSQL runs as `postgres` and must reach its folder
        server = embedded.ensure_running(Path(home), quiet=True, server=SERVER)
        try:
            with contextlib.ExitStack() as stack:
                clients = 3 * max(sizes) + 100  # each daemon's two, and room
                pooler = stack.enter_context(pgbouncer(server, POOL_SIZE, clients)) if pooled else None
                counters, databases = _Counters(server, pooler), Databases(server)
                stack.callback(counters.conn.close)
                stack.callback(databases.close)
                for size in sizes:
                    print(f"bench: fleet of {size} daemons ...", file=sys.stderr, flush=True)
                    measured: dict[str, Any] = {}
                    try:
                        with databases.scenario(f"fleet{size}") as database:
                            results[size] = _measure(database, size, short, settings, counters, measured)
                    except Exception as error:  # the other sizes' figures stand; this one says why not
                        if short:
                            raise
                        before = ", ".join(
                            f"{k} {v:.1f}" for k, v in measured.items() if isinstance(v, float)
                        )
                        failed[size] = f"{type(error).__name__}: {error}" + (
                            f" (before it: {before})" * bool(before)
                        )
                    print(f"bench: fleet of {size}: {results.get(size) or failed[size]}", file=sys.stderr)
        finally:
            embedded.stop(Path(home))
    way = (
        f"polling through PgBouncer (transaction mode, {POOL_SIZE} server connections)"
        if pooled
        else "LISTEN/NOTIFY"
    )
    rows = [
        (
            "fleet",
            "settings",
            f"SFQ_HEARTBEAT_S={settings['SFQ_HEARTBEAT_S']}, SFQ_RESCUE_AFTER_S={rescue_after_s}, "
            f"SFQ_POLL_INTERVAL_S={settings.get('SFQ_POLL_INTERVAL_S', 'default')}, "
            f"SFQ_POLL_GAP_S={settings.get('SFQ_POLL_GAP_S', 'default')}, {way}, "
            f"private cluster with max_connections={SERVER['max_connections']}",
        )
    ]
    for size, r in results.items():
        name = f"{size} daemons ({r['processes']} processes)"
        bouncer = f"PgBouncer {r['pooler_cpu_pct']:.1f}% more; " if pooled else ""
        rows += [
            (
                "fleet",
                f"{name}: idle database CPU ({r['seconds']:.0f} s), per daemon; queries/s; connections",
                f"{r['cpu_pct']:.1f}% of a core, {r['cpu_pct'] / size:.3f}% per daemon; "
                f"{bouncer}{r['queries_per_s']:.0f} queries/s; {r['connections']} connections "
                f"(the daemons' Python: {r['fleet_cpu_pct']:.1f}% of a core)",
            ),
            (
                "fleet",
                f"{name}: idle statements/s, the most called",
                "; ".join(f"`{query.replace('|', '/')}` {rate:.1f}" for query, rate in r["top_statements"]),
            ),
            (
                "fleet",
                f"{name}: oldest heartbeat while idle (every {settings['SFQ_HEARTBEAT_S']} s expected)",
                f"{r['oldest_heartbeat_s']:.1f} s",
            ),
            (
                "fleet",
                f"{name}: pickup p50 / p99 ({r['samples']} jobs, one every {r['spacing_s']:g} s)",
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms",
            ),
            (
                "fleet",
                f"{name}: throughput ({r['burst']} no-op jobs at once)",
                f"{r['jobs_per_s']:.0f} jobs/s",
            ),
            (
                "fleet",
                f"{name}: NOTIFY herd, fetches per job",
                # Polling, a job's fetches are the polls it interrupts: busy workers poll less than idle ones.
                f"none, no NOTIFY (fetches per job less the idle polls: {r['herd']:.1f})"
                if pooled
                else f"{r['herd']:.1f}",
            ),
            (
                "fleet",
                f"{name}: rescue, {r['rescue_daemons_killed']} killed daemons, first / all taken up",
                f"{r['rescue_first_s']:.1f} / {r['rescue_all_s']:.1f} s = "
                f"{r['rescue_all_s'] / rescue_after_s:.2f} x SFQ_RESCUE_AFTER_S ({r['rescue_killed']} jobs; "
                f"{r['rescue_running_at_kill']} of {size} daemons busy at the kill; "
                f"{r['rescue_lost_before_kill']} jobs of live daemons handed on before it, heartbeat late; "
                f"{r['rescue_failed']} models failed, lost too often)",
            ),
        ]
    rows += [
        ("fleet", f"{size} daemons: not measured", error.replace("|", "/")) for size, error in failed.items()
    ]
    kept = not (short or chosen)
    chart = CHARTS[pooled] if kept else Path(tempfile.mkdtemp()) / "fleet.png"  # drawn, not kept
    _chart(results, rescue_after_s, polling, chart)
    return {
        "rows": rows,
        "data": {
            "settings": settings,
            "rescue_after_s": rescue_after_s,
            "results": results,
            "failed": failed,
            "chart": None if not kept else str(chart.relative_to(ROOT)),
        },
    }


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(_serve_fleet(int(sys.argv[1]), int(sys.argv[2]))) else 1)
