"""The worker daemon's commands, added to `sfq` through the `sfq.commands` entry point (pyproject.toml):
`sfq worker N` (one daemon, what systemd's worker@N runs) and `sfq workers --count N` (N daemons, each
restarted if it exits, where there is no systemd). `sfq workers` returns its exit status; `sfq worker`
exits with its own."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import sys
from typing import NoReturn

from queue_app.cli.common import positive
from queue_app.config import database_url


def cmd_worker(args: argparse.Namespace) -> NoReturn:
    from workers.daemon import serve

    settings = args.settings
    if args.max_jobs_per_child:
        settings = dataclasses.replace(settings, max_jobs_per_child=args.max_jobs_per_child)
    status = serve.run(args.instance, database_url(settings), settings)
    # Stopped: its jobs ended or handed back, its connections closed. What is registered to run at exit
    # runs (logging's and OpenTelemetry's flushes, multiprocessing's clean-up); the interpreter's teardown
    # of scikit-learn, SciPy and skops does not: it took 1.1 s of CPU at every stop (2026-12-03).
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def cmd_workers(args: argparse.Namespace) -> int:
    from workers.daemon import supervisor

    extra = ["--max-jobs-per-child", str(args.max_jobs_per_child)] if args.max_jobs_per_child else []
    # Long enough for a worker's grace period and its result-write retries (workers/daemon/runtime.py).
    stop_timeout_s = args.settings.grace_s + 90
    return supervisor.run(args.count, database_url(args.settings), extra, stop_timeout_s)


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run worker daemon N (what systemd's worker@N runs)")
    worker.add_argument("instance", type=int)
    worker.add_argument(
        "--max-jobs-per-child",
        type=int,
        default=None,
        help="recycle the training process after this many jobs (default 10)",
    )
    worker.set_defaults(func=cmd_worker)

    workers = sub.add_parser("workers", help="run N worker daemons, restarting any that exits")
    workers.add_argument(
        "--count", type=positive, default=os.cpu_count() or 1, help="default: the number of cores"
    )
    workers.add_argument("--max-jobs-per-child", type=int, default=None)
    workers.set_defaults(func=cmd_workers)
