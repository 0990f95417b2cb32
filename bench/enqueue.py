"""Scenario 3: enqueueing, against the size of the database (issue 15). Three ways in, each measured in
rounds: POST /train against a real `sfq api` at concurrency 50 (a minimal keep-alive HTTP/1.1 client on raw
asyncio streams, so that the client takes little of the machine's CPU); plain SQL INSERTs into
training_requests, one per transaction, from SQL_CONNECTIONS connections at once (pgbench, PostgreSQL's own
load generator: a C client, one statement per transaction), with no worker asleep (no commit notifies: a
fleet whose workers are all busy) and with a daemon from before 0028 asleep (every commit notifies,
sql/schema/queue.sql), sent as psql sends a statement (the simple protocol: parsed and planned at each) and
as a prepared statement (what a service's driver sends once a statement repeats: psycopg and JDBC from its
fifth execution on a connection, asyncpg always); and INSERT ... SELECT of many rows in one statement.
Then a sweep via sfq_submit_sweep. No worker runs: only enqueueing is measured. Each database's fill takes
its time too.

Each size of database (SFQ_BENCH_ENQUEUE_SIZES, comma-separated model counts; the synthetic models of the
reads scenario, bench/reads.py) is a database of its own, and each round measures every size in turn, in a
rotating order, so that a noisy moment of a shared machine falls on all sizes alike
(SFQ_BENCH_ENQUEUE_ROUNDS rounds, at least 3 in a full run). A rate is reported as the median of its rounds
with their min-max; the chart (docs/bench-enqueue.png) draws each rate against models in the database.

The goal of 2,000 single-row INSERTs a second is the plain insert's; every commit notifying has none. A
notifying commit takes a cluster-wide lock and holds it until after its commit (PostgreSQL's
PreCommit_Notify, src/backend/commands/async.c), so such commits follow one another, each with its WAL
flush, whatever the design. Since 0028 a commit notifies only when it finds a worker asleep, and wakes that
one; a commit notifies at every enqueue only for a daemon from before 0028 (or with Procrastinate's own
trigger, which sfq disables): that measure is their price, not sfq's enqueue's."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import reads
from bench.common import ROOT, Process, free_port, loadavg, new_figure, percentile, processes, save_chart
from queue_app import gateway
from queue_app.config import Settings

SHORT_SIZES = (0, 2_000)
FULL_SIZES = (0, 1_000_000)
CHART = ROOT / "docs" / "bench-enqueue.png"
HTTP_CONCURRENCY = 50
SQL_CONNECTIONS = 8
MEASURES = {  # key: what the report calls it
    "http": f"HTTP POST /train at concurrency {HTTP_CONCURRENCY}, req/s",
    "sql_one": f"SQL INSERT, one per transaction, {SQL_CONNECTIONS} connections, rows/s",
    "sql_one_prepared": f"SQL INSERT, one per transaction, {SQL_CONNECTIONS} connections, prepared, rows/s",
    "sql_one_asleep": f"SQL INSERT, one per transaction, {SQL_CONNECTIONS} connections, a daemon from before "
    "0028 asleep (every commit notifies), rows/s",
    "sql_many": "SQL INSERT ... SELECT, many rows in one statement, rows/s",
}
GOALS = {  # issue 15, 2 cores; every commit notifying has none (the module's docstring)
    "http": 1_000,
    "sql_one": 2_000,
    "sql_one_prepared": 2_000,
    "sql_many": 5_000,
}
# A listening worker of the training queue registered asleep, as sfq_fetch_job registers a daemon from
# before 0028 (its "asleep" and "sleeper" locks, and its row without a channel: sql/schema/queue.sql): every
# enqueue notifies while it is held (a daemon of 0028 is woken by one enqueue, then registers again). No
# worker runs in this scenario, so without it no enqueue notifies: what a fleet whose workers are all busy
# sees. Worker id 0: no Procrastinate worker has it.
ASLEEP = (
    "SELECT pg_advisory_lock_shared(hashtext('sfq_asleep'), hashtext('training')),"
    " pg_advisory_lock(hashtext('sfq_sleeper'), 0)",
    "INSERT INTO sfq_sleepers (worker_id, queue_name) VALUES (0, 'training')",
)
AWAKE = "DELETE FROM sfq_sleepers WHERE worker_id = 0"
# One request per transaction, each a new model (alpha drawn from a billion values).
PGBENCH_SCRIPT = (
    "\\set a random(1, 1000000000)\n"
    "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
    "VALUES ('MSFT', 'Ridge', jsonb_build_object('alpha', :a * 0.000001));\n"
)


async def _client(port: int, bodies: list[bytes], latencies: list[float], statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body in bodies:
            start = time.perf_counter()
            writer.write(
                b"POST /train HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000)
            statuses.append(int(head.split(b" ", 2)[1]))
    finally:
        writer.close()


async def _http(port: int, requests: int, concurrency: int, offset: int):
    bodies = [
        json.dumps(
            {
                "symbol": "AAPL",
                "algorithm": "Ridge",
                "hyperparameters": {"alpha": round(0.000001 * (offset + i + 1), 9)},
            }
        ).encode()
        for i in range(requests)
    ]
    latencies: list[float] = []
    statuses: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(_client(port, bodies[i::concurrency], latencies, statuses) for i in range(concurrency))
    )
    return requests / (time.perf_counter() - start), latencies, statuses


def pgbench() -> str:
    """PostgreSQL's pgbench: on the PATH, or with the server's binaries (Debian's /usr/lib/postgresql)."""
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))), None
    )
    if not found:
        raise RuntimeError("the enqueue scenario needs pgbench (PostgreSQL's client programs)")
    return found


def sql_one_per_transaction(
    url: str, seconds: float, connections: int = SQL_CONNECTIONS, protocol: str = "simple"
) -> float:
    """Single-row INSERTs into training_requests, one per transaction, from `connections` connections for
    `seconds` (pgbench), sent by `protocol` (pgbench -M: simple or prepared): rows a second."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(PGBENCH_SCRIPT)
        script.flush()
        result = subprocess.run(
            [
                pgbench(),
                "-n",
                "-M",
                protocol,
                "-f",
                script.name,
                "-c",
                str(connections),
                "-j",
                "2",
                "-T",
                f"{seconds:g}",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no rate:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """The machine-wide benchmark lock (SFQ_BENCH_LOCK: a file, as `flock FILE` takes it) while measuring:
    not while filling (10 M models take a quarter of an hour), when other benchmarks may measure."""
    path = os.environ.get("SFQ_BENCH_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as lock:
        print(f"bench: enqueue: waiting for {path}", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def worker_asleep(url: str) -> Iterator[None]:
    """While inside, a worker of the training queue seems asleep to every enqueue (ASLEEP)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in ASLEEP:
            conn.execute(statement)
        try:
            yield
        finally:
            conn.execute(AWAKE)


def sql_many_in_one_statement(url: str, rows: int, offset: int) -> float:
    """`rows` requests in one INSERT ... SELECT: rows a second. Plain SQL as another service would write it:
    this statement is the subject of the measurement, so it runs as written, not through sfq's gateway."""
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
            "SELECT 'IBM', 'Ridge', jsonb_build_object('alpha', (%s + i) * 0.000001) "
            "FROM generate_series(1, %s) i",
            (offset, rows),
        )
        return rows / (time.perf_counter() - start)


def http_rate(port: int, requests: int, offset: int) -> tuple[float, list[float], int]:
    """POST /train at concurrency 50: requests a second, latencies (ms) and how many were not 201."""
    rate, latencies, statuses = asyncio.run(_http(port, requests, HTTP_CONCURRENCY, offset))
    return rate, latencies, sum(1 for s in statuses if s != 201)


def _sweep(url: str, size: int) -> dict[str, float]:
    alphas = [round(0.0001 * (i + 1), 6) for i in range(size // 10)]
    grid = {"horizon": list(range(1, 11)), "hyperparameters.alpha": alphas}
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        _, combinations, created, elapsed_ms = conn.execute(
            "SELECT id, combinations, created, elapsed_ms FROM sfq_submit_sweep(%s::jsonb, %s::jsonb)",
            (json.dumps({"symbol": "GOOG", "algorithm": "Ridge"}), json.dumps(grid)),
        ).fetchone()
        wall = time.perf_counter() - start
    return {"sweep_n": combinations, "created": created, "sweep_ms": elapsed_ms, "sweep_wall_ms": wall * 1000}


def describe(values: list[float]) -> str:
    """A rate's median and its range over the rounds."""
    return f"{percentile(values, 0.5):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _chart(results: dict[int, dict[str, list[float]]], rounds: int, short: bool) -> str | None:
    sizes = sorted(results)
    figure, axis = new_figure(figsize=(9, 6.5))
    for key, label in MEASURES.items():
        medians = [percentile(results[s][key], 0.5) for s in sizes]
        low = [m - min(results[s][key]) for m, s in zip(medians, sizes, strict=True)]
        high = [max(results[s][key]) - m for m, s in zip(medians, sizes, strict=True)]
        line = axis.errorbar(
            [max(s, 1) for s in sizes], medians, yerr=[low, high], marker="o", capsize=4, label=label
        )
        if key in GOALS:
            axis.axhline(GOALS[key], color=line[0].get_color(), linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("models in the database (0 drawn at 1)")
    axis.set_ylabel("enqueued per second (median, bars: min-max)")
    axis.set_title(f"sfq enqueue rate against the size of the database ({rounds} rounds; dotted: goals)")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: off every line
    return save_chart(figure, CHART, short)


def scenario(url: str, short: bool) -> dict[str, Any]:
    sizes = SHORT_SIZES if short else FULL_SIZES
    if os.environ.get("SFQ_BENCH_ENQUEUE_SIZES"):
        sizes = tuple(int(s) for s in os.environ["SFQ_BENCH_ENQUEUE_SIZES"].split(","))
    rounds = int(os.environ.get("SFQ_BENCH_ENQUEUE_ROUNDS", 1 if short else 3))
    http_n, sql_s, many_n, sweep_n = (100, 1, 100, 100) if short else (5000, 15, 5000, 5000)
    pgbench()  # refused before anything is filled
    base = conninfo_to_dict(url)["dbname"]
    server = make_conninfo(url, dbname="postgres")
    urls, filled_s = {}, {}
    for models in sizes:  # each size a copy of the scenario's database, filled to it
        urls[models] = gateway.recreate_database(server, f"{base}_{models}", template=base)
        start = time.perf_counter()
        reads.fill(urls[models], models, 0)
        filled_s[models] = time.perf_counter() - start
        print(
            f"bench: enqueue: {models:,} models filled in {filled_s[models]:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    results: dict[int, dict[str, list[float]]] = {m: {key: [] for key in MEASURES} for m in sizes}
    latencies: dict[int, list[float]] = {m: [] for m in sizes}
    refused = 0
    try:
        with processes() as started:
            ports = {}
            for models in sizes:
                ports[models] = free_port()
                api = Process(["api", "--port", str(ports[models])], {"POSTGRES_URL": urls[models]})
                started.append(api)
                api.wait_for_line(r"Uvicorn running on", timeout=60)
                http_rate(ports[models], HTTP_CONCURRENCY, 500_000_000)  # warm-up: the API's pool filled
            with measuring():
                for r in range(rounds):
                    order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]
                    print(f"bench: enqueue: round {r + 1} (load {loadavg()})", file=sys.stderr, flush=True)
                    for models in order:
                        offset = (r + 1) * 10_000_000
                        rate, times, bad = http_rate(ports[models], http_n, offset)
                        results[models]["http"].append(rate)
                        latencies[models] += times
                        refused += bad
                        results[models]["sql_one"].append(sql_one_per_transaction(urls[models], sql_s))
                        results[models]["sql_one_prepared"].append(
                            sql_one_per_transaction(urls[models], sql_s, protocol="prepared")
                        )
                        with worker_asleep(urls[models]):
                            rate = sql_one_per_transaction(urls[models], sql_s)
                        results[models]["sql_one_asleep"].append(rate)
                        results[models]["sql_many"].append(
                            sql_many_in_one_statement(urls[models], many_n, offset)
                        )
                sweep = _sweep(urls[sizes[-1]], sweep_n)
    finally:
        for models in sizes:
            gateway.drop_database(server, f"{base}_{models}")
    pool = Settings.from_env().pool_size
    rows = []
    for models in sizes:
        rows.append(
            (
                "enqueue",
                f"fill to {models:,} models (synthetic rows, bench/reads.py)",
                f"{filled_s[models]:.0f} s",
            )
        )
        for key, label in MEASURES.items():
            rows.append(("enqueue", f"{label}, {models:,} models", describe(results[models][key])))
        rows.append(
            (
                "enqueue",
                f"HTTP POST /train latency p50 / p99, {models:,} models (API pool {pool})",
                f"{percentile(latencies[models], 0.5):.1f} / {percentile(latencies[models], 0.99):.1f} ms"
                + (f" ({refused} not 201)" if refused else ""),
            )
        )
    rows.append(
        (
            "enqueue",
            f"sweep of {sweep['sweep_n']} combinations ({sweep['created']} models) at {sizes[-1]:,} models: "
            "elapsed_ms / client wall",
            f"{sweep['sweep_ms']:.0f} ms / {sweep['sweep_wall_ms']:.0f} ms "
            f"({sweep['created'] / sweep['sweep_wall_ms'] * 1000:.0f} jobs/s)",
        )
    )
    return {
        "rows": rows,
        "data": {
            "rounds": rounds,
            "results": results,
            "filled_s": filled_s,
            **sweep,
            "chart": _chart(results, rounds, short),
        },
    }
