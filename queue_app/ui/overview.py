"""The dashboard's front page: the fleet (workers and what each trains), queue depth, throughput over the
last hour, recent failures, sweeps and studies. The same queries as `sfq status` and GET /metrics."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from queue_app import gateway, monitor
from queue_app.ui import charts
from queue_app.ui.html import REFRESH_S, chart, esc, link, page, progress, section, table, when


def _worker_row(worker: dict[str, Any], stale_after_s: float) -> list[str]:
    beat = f"{worker['silent_s']:.0f} s ago" if worker["registered"] else "stopped"
    job = "idle"
    if model_id := worker["model_id"]:
        job = f"{link(f'/ui/models/{model_id}', f'model {model_id}')} {progress(worker['progress'])}"
    return [
        esc(worker["host"]),
        esc(worker["pid"]),
        esc(worker["instance"]),
        job,
        when(worker["since"]),
        beat if monitor.alive(worker, stale_after_s) else f'<span class="status-failed">{beat}</span>',
    ]


def _failure_row(failure: dict[str, Any]) -> list[str]:
    return [
        link(f"/ui/models/{failure['id']}", failure["id"]),
        esc(failure["symbol"]),
        esc(failure["algorithm"]),
        when(failure["finished_at"]),
        f'<span class="wrap">{esc(failure["error"])}</span>',
    ]


def _sweep_row(sweep: dict[str, Any]) -> list[str]:
    return [
        link(f"/ui/sweeps/{sweep['id']}", sweep["id"]),
        when(sweep["created_at"]),
        esc(sweep["combinations"]),
        esc(sweep["created"]),
        esc(sweep["finished"]),
    ]


def _study_row(study: dict[str, Any]) -> list[str]:
    return [
        link(f"/ui/studies/{study['id']}", study["id"]),
        esc(study["name"] or ""),
        when(study["created_at"]),
        esc(study["state"]),
        esc(f"{study['sampler']} / {study['pruner']}"),
        esc(", ".join(study["objectives"])),
        esc(study["trials"]),
    ]


async def overview(request: Request) -> HTMLResponse:
    pool, stale_after_s = request.app.state.pool, request.app.state.rescue_after_s
    workers = await gateway.run_pooled(pool, gateway.status_workers())
    depth = await gateway.run_pooled(pool, gateway.queue_depth())
    rates = await gateway.run_pooled(pool, gateway.throughput(60))
    failures = await gateway.run_pooled(pool, gateway.recent_failures(10))
    sweeps = await gateway.run_pooled(pool, gateway.recent_sweeps(10))
    studies = await gateway.run_pooled(pool, gateway.recent_studies(10))
    completed, failed = [r["completed"] for r in rates], [r["failed"] for r in rates]
    svg = await run_in_threadpool(charts.throughput, [r["minute"] for r in rates], completed, failed)
    worker_headers = ["host", "pid", "n", "current job", "since", "last heartbeat"]
    body = "".join(
        [
            section(
                "Workers",
                table(worker_headers, (_worker_row(w, stale_after_s) for w in workers), id_="workers"),
            ),
            section(
                "Queue depth",
                table(
                    ["queue", "status", "jobs"],
                    ([esc(r["queue"]), esc(r["status"]), esc(r["jobs"])] for r in depth),
                    numeric=[2],
                    id_="queues",
                ),
            ),
            section(
                "Models finished per minute, last hour",
                f"<p>{sum(completed)} completed, {sum(failed)} failed</p>"
                + chart(svg, "throughput", "no data"),
            ),
            section(
                "Recent failures",
                table(
                    ["model", "symbol", "algorithm", "finished", "reason"],
                    map(_failure_row, failures),
                    id_="failures",
                ),
            ),
            section(
                "Sweeps",
                table(
                    ["sweep", "created", "combinations", "new models", "finished"],
                    map(_sweep_row, sweeps),
                    numeric=[2, 3, 4],
                ),
            ),
            section(
                "Studies",
                table(
                    ["study", "name", "created", "state", "sampler / pruner", "objective", "trials"],
                    map(_study_row, studies),
                    numeric=[6],
                    id_="studies",
                ),
            ),
        ]
    )
    return page("Overview", body, refresh_s=REFRESH_S)
