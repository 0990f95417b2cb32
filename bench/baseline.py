"""The old architecture, rebuilt as a baseline: an asyncio program (standing in for the async web
process) that hands each job to a ProcessPoolExecutor (one process per core) or a ThreadPoolExecutor.

`python -m bench.baseline process|thread WORKERS URL`: warms the pool, prints "ready", reads one line of
model ids (comma-separated) from stdin, runs them all, prints one JSON line of per-job phase times.
"""

from __future__ import annotations

import asyncio
import json
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

from threadpoolctl import threadpool_limits

from bench.jobs import run_job, warm


async def main(kind: str, workers: int, url: str) -> None:
    threadpool_limits(1)
    pool: Executor = (ProcessPoolExecutor if kind == "process" else ThreadPoolExecutor)(max_workers=workers)
    loop = asyncio.get_running_loop()
    with pool:
        await asyncio.gather(*(loop.run_in_executor(pool, warm, i) for i in range(workers * 2)))
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        ids = [int(i) for i in line.split(",") if i.strip()]
        times = await asyncio.gather(*(loop.run_in_executor(pool, partial(run_job, url, i)) for i in ids))
        print(json.dumps(dict(zip(map(str, ids), times, strict=True))), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
