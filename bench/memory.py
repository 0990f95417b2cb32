"""Scenario 5: resident memory (from /proc, every 0.2 s) of one `sfq worker` daemon, its fork server and
its training process across a run of jobs, with recycling on (SFQ_MAX_JOBS_PER_CHILD's default) and off.
A training process is forked from the fork server: its RSS counts the pages it still shares with it."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench import jobs
from bench.common import children, processes, start_sfq_workers, wait_for_models
from queue_app.config import Settings
from workers.daemon.child import resident_mb

OFF = 100_000


def _sample(pid: int, stop: threading.Event, out: dict[str, Any]) -> None:
    while not stop.is_set():
        out["daemon"].append(resident_mb(pid))
        for server in children(pid):  # the fork server (and multiprocessing's small helpers)
            out["server"].append(resident_mb(server))
            for child in children(server):
                out["children"].setdefault(child, []).append(resident_mb(child))
        stop.wait(0.2)


def _run(url: str, count: int, max_jobs: int, run_offset: int, short: bool) -> dict[str, Any]:
    mix = jobs.standard_mix(short)
    requests = [{**mix[k % len(mix)], "run": run_offset + k // len(mix)} for k in range(count)]
    samples: dict[str, Any] = {"daemon": [], "server": [], "children": {}}
    with processes() as started:
        (daemon,) = start_sfq_workers(started, url, 1, SFQ_MAX_JOBS_PER_CHILD=str(max_jobs))
        idle = resident_mb(daemon.pid)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(daemon.pid, stop, samples), daemon=True)
        sampler.start()
        ids = []
        for request in requests:  # one transaction each: the run numbers make each a new model
            ids += jobs.submit(url, [{k: v for k, v in request.items() if k != "run"}], request["run"])
        wait_for_models(url, ids, 120 if short else 3600)
        time.sleep(0.2 if short else 1)
        stop.set()
        sampler.join()
        end = resident_mb(daemon.pid)
    children = samples["children"]
    return {
        "daemon_idle": idle,
        "daemon_end": end,
        "daemon_max": max(samples["daemon"]),
        "server_max": max(samples["server"], default=0.0),
        "child_max": max((max(v) for v in children.values()), default=0.0),
        "child_last": list(children.values())[-1][-1] if children else 0.0,
        "processes": len(children),
    }


def scenario(url: str, short: bool) -> dict[str, Any]:
    count = 5 if short else 50
    default = Settings.from_env().max_jobs_per_child
    on = _run(url, count, default, 2, short)
    off = _run(url, count, OFF, 1000, short)
    rows = []
    for name, r in ((f"recycling every {default} jobs", on), ("recycling off", off)):
        rows.append(
            (
                "memory",
                f"{count} jobs, {name}: daemon RSS idle / max / end",
                f"{r['daemon_idle']:.0f} / {r['daemon_max']:.0f} / {r['daemon_end']:.0f} MB",
            )
        )
        rows.append(("memory", f"{count} jobs, {name}: fork server RSS max", f"{r['server_max']:.0f} MB"))
        rows.append(
            (
                "memory",
                f"{count} jobs, {name}: training process RSS max / last sample; processes seen",
                f"{r['child_max']:.0f} / {r['child_last']:.0f} MB; {r['processes']}",
            )
        )
    return {"rows": rows, "data": {"on": on, "off": off}}
