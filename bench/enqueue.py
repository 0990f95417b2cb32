"""Scenario 3: enqueueing. POST /train against a real `sfq api` at concurrency 50 (a minimal keep-alive
HTTP/1.1 client on raw asyncio streams, so that the client takes little of the machine's CPU); plain
SQL INSERTs into training_requests, one per transaction and many per statement; a sweep via
sfq_submit_sweep. No worker runs: only enqueueing is measured."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg

from bench.common import Process, percentile, processes
from queue_app.config import Settings


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
                "hyperparameters": {"alpha": round(0.001 * (offset + i + 1), 6)},
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario(url: str, short: bool) -> dict[str, Any]:
    http_n, sql_n, sweep_n = (100, 100, 100) if short else (5000, 5000, 5000)
    rows = []
    with processes() as started:
        port = _free_port()
        api = Process(["api", "--port", str(port)], {"POSTGRES_URL": url})
        started.append(api)
        api.wait_for_line(r"Uvicorn running on", timeout=60)
        asyncio.run(_http(port, 50, 50, 10_000_000))  # warm-up: 50 connections, the API's pool filled
        rate, latencies, statuses = asyncio.run(_http(port, http_n, 50, 0))
    bad = sum(1 for s in statuses if s != 201)
    pool = Settings.from_env().pool_size
    rows.append(
        (
            "enqueue",
            f"HTTP POST /train, {http_n} requests at concurrency 50 (API pool {pool})",
            f"{rate:.0f} req/s",
        )
    )
    rows.append(
        (
            "enqueue",
            "HTTP POST /train latency p50 / p99",
            f"{percentile(latencies, 0.5):.1f} / {percentile(latencies, 0.99):.1f} ms"
            + (f" ({bad} not 201)" if bad else ""),
        )
    )
    # Plain SQL as another service would write it: these client statements are the subject of the
    # measurement, so they run as written, not through sfq's gateway.
    with psycopg.connect(url, autocommit=True) as conn:
        insert = (
            "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
            "VALUES ('MSFT', 'Ridge', jsonb_build_object('alpha', %s::float8))"
        )
        start = time.perf_counter()
        for i in range(sql_n):
            conn.execute(insert, (0.001 * (i + 1),))
        one_each = sql_n / (time.perf_counter() - start)
        start = time.perf_counter()
        conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, hyperparameters) "
            "SELECT 'IBM', 'Ridge', jsonb_build_object('alpha', i * 0.001) FROM generate_series(1, %s) i",
            (sql_n,),
        )
        many = sql_n / (time.perf_counter() - start)
        alphas = [round(0.0001 * (i + 1), 6) for i in range(sweep_n // 10)]
        grid = {"horizon": list(range(1, 11)), "hyperparameters.alpha": alphas}
        start = time.perf_counter()
        sweep_id, combinations, created, elapsed_ms = conn.execute(
            "SELECT id, combinations, created, elapsed_ms FROM sfq_submit_sweep(%s::jsonb, %s::jsonb)",
            (json.dumps({"symbol": "GOOG", "algorithm": "Ridge"}), json.dumps(grid)),
        ).fetchone()
        sweep_wall = time.perf_counter() - start
    rows.append(("enqueue", f"SQL INSERT, one per transaction ({sql_n})", f"{one_each:.0f} jobs/s"))
    rows.append(("enqueue", f"SQL INSERT ... SELECT, {sql_n} rows in one statement", f"{many:.0f} jobs/s"))
    rows.append(
        (
            "enqueue",
            f"sweep of {combinations} combinations ({created} models): elapsed_ms / client wall",
            f"{elapsed_ms:.0f} ms / {sweep_wall * 1000:.0f} ms ({created / sweep_wall:.0f} jobs/s)",
        )
    )
    return {
        "rows": rows,
        "data": {
            "http_rate": rate,
            "http_p50": percentile(latencies, 0.5),
            "http_p99": percentile(latencies, 0.99),
            "sql_one": one_each,
            "sql_many": many,
            "sweep_ms": elapsed_ms,
            "sweep_wall_ms": sweep_wall * 1000,
            "sweep_n": combinations,
        },
    }
