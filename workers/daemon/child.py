"""The training process: a child of the worker daemon that loads bars and trains, one job at a time.

Training runs here rather than in a thread of the daemon so that the daemon's event loop (heartbeats,
LISTEN/NOTIFY) keeps running through long native calls, a crash in native code fails only the job,
and the work can be killed. The child is recycled after `max_jobs` jobs to keep memory bounded.

Children come from a fork server that imported scikit-learn, pandas and psycopg once, when the daemon
started: a fresh child costs a fork (milliseconds) instead of a new interpreter importing them again
(about 1.5 s of a core, which recycling paid every `max_jobs` jobs, on the job's critical path). The
fork server holds no connection and runs no thread, so forking it is safe; it exits when the daemon
dies, and its children die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from queue_app import gateway
from queue_app.errors import Unavailable
from workers.daemon.outcome import Completed, Failed, FoldScored, Outcome, Pruned, Retry

THREAD_LIMIT_ENV = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    )
}


PR_SET_PDEATHSIG = 1
CHECK_EVERY_S = 0.25  # how often the deadline and the memory limit are checked
# Imported once by the fork server, so that each training process starts with them loaded.
PRELOAD = ["queue_app.gateway", "threadpoolctl", "workers.daemon.data", "workers.modelling.training"]


def resident_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"training process died (signal {-code}, {name})"
    return f"training process died (exit code {code})"


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send `signum` to this process when its parent dies, so nothing is orphaned."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def _child_main(conn: Connection, url: str) -> None:
    """Loop: receive (spec, model id, attempt), answer with its Outcome (Completed, Failed or Retry);
    None ends the loop. Progress goes straight to the model's row (phase and fraction, a few small
    UPDATEs per training, only while this attempt holds the model)."""
    die_with_parent()  # a worker killed with SIGKILL takes its training with it
    from threadpoolctl import threadpool_limits

    from workers.daemon.data import load_bars
    from workers.modelling.training import LOADED, TrainingError, train, training_end

    threadpool_limits(1)
    db = None
    while (job := conn.recv()) is not None:
        spec, model_id, attempt = job
        try:
            try:
                if db is None or db.closed:
                    db = gateway.connect(url, "sfq-training", autocommit=True)
                _report(db, model_id, attempt, "loading", 0.0)
                bars, context = load_bars(db, spec, training_end(spec))
            except Unavailable:  # a connection left over from before a database restart
                db = gateway.connect(url, "sfq-training", autocommit=True)
                bars, context = load_bars(db, spec, training_end(spec))
            progress = functools.partial(_report, db, model_id, attempt)
            progress("features", LOADED)
            on_fold = lambda fold: conn.send(FoldScored(fold))  # noqa: E731
            conn.send(Completed(train(spec, bars, context=context, progress=progress, on_fold=on_fold)))
        except TrainingError as error:
            conn.send(Failed(str(error)))
        except Unavailable as error:
            db = None
            conn.send(Retry(f"while loading bars: {error}"))
        except Exception as error:  # an estimator's error is the job's failure, not the process's
            conn.send(Failed(f"{type(error).__name__}: {error}"))


def _report(db, model_id: int, attempt: int, phase: str, fraction: float) -> None:
    """Progress on the model's row; a nicety that never fails or stalls a training."""
    with contextlib.suppress(Exception):
        gateway.run(db, gateway.report_progress(model_id, attempt, phase, round(fraction, 3)))


class TrainingProcess:
    """Owns one training child: starts it on demand, recycles it, and reports how it died."""

    def __init__(self, url: str, max_jobs: int):
        self.url = url
        self.max_jobs = max_jobs
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._jobs = 0
        self._interrupted: str | None = None
        self._killing = threading.Lock()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_child_main, args=(child, self.url), name="sfq-training", daemon=True
        )
        self._process.start()
        child.close()
        self._conn, self._jobs = parent, 0

    def ensure_started(self) -> int:
        """Start (or recycle) the child before a job; returns its pid."""
        if self._process is not None and (not self._process.is_alive() or self._jobs >= self.max_jobs):
            self.close()
        if self._process is None:
            self._start()
        return self._process.pid

    async def train(
        self,
        spec: dict[str, Any],
        timeout_s: float,
        memory_limit_mb: int,
        model_id: int,
        attempt: int,
        on_fold: Callable[[dict[str, Any]], str | None] = lambda fold: None,
    ) -> Outcome:
        """Train in the child; kill it at the deadline, above the memory limit, on `interrupt()`, or when
        `on_fold` (told each CV fold's scores as it ends, in a thread) gives a reason to prune it.
        The model id and attempt let the child report progress on the model's row. Every end is an
        Outcome; only a cancellation (the job aborted) raises, once the child is killed."""
        if self._interrupted:  # shutting down: do not start another training
            return Retry(f"interrupted: {self._interrupted}", at_once=True)
        try:
            self._send((spec, model_id, attempt))
        except OSError as error:  # cannot fork now
            return Retry(str(error))
        limits = (time.monotonic() + timeout_s, timeout_s, memory_limit_mb, on_fold)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._wait_for_answer, *limits)
        except asyncio.CancelledError:
            self.kill()
            raise

    def _send(self, job: tuple[dict[str, Any], int, int]) -> None:
        self.ensure_started()
        self._jobs += 1
        try:
            self._conn.send(job)
        except OSError:  # the child died between jobs: start a fresh one
            self.kill()
            self.ensure_started()
            self._conn.send(job)

    def interrupt(self, reason: str) -> None:
        """Stop the running training and any later one (shutdown): `train` returns a Retry due at once."""
        self._interrupted = reason
        process = self._process  # the waiting thread may discard it meanwhile
        if process is not None and process.is_alive():
            process.kill()

    def _wait_for_answer(
        self, deadline: float, timeout_s: float, memory_limit_mb: int, on_fold: Callable[[dict], str | None]
    ) -> Outcome:
        process, conn = self._process, self._conn
        folds: list[dict] = []
        while True:
            while not (ready := wait([conn, process.sentinel], timeout=CHECK_EVERY_S)):
                if time.monotonic() > deadline:
                    self._kill(process, conn)
                    return Failed(f"timed out after {timeout_s:g} s")
                if memory_limit_mb and (used := resident_mb(process.pid)) > memory_limit_mb:
                    self._kill(process, conn)
                    return Failed(
                        f"training process killed: resident memory {used:.0f} MB "
                        f"over the limit of {memory_limit_mb} MB"
                    )
            if conn not in ready:
                break
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the child died mid-answer
                break
            if not isinstance(message, FoldScored):
                return message
            folds.append(message.fold)
            if reason := on_fold(message.fold):
                self._kill(process, conn)
                return Pruned(reason, folds)
        process.join(timeout=5)
        code = process.exitcode
        self._kill(process, conn)
        if self._interrupted:
            return Retry(f"interrupted: {self._interrupted}", at_once=True)
        return Failed(describe_exit(code))

    def kill(self) -> None:
        if self._process is not None:
            self._kill(self._process, self._conn)

    def _kill(self, process, conn: Connection) -> None:
        """Kill `process` and forget it, unless a newer child has replaced it meanwhile. The waiting
        thread and the event loop (a cancelled job) may both get here: closing the pipe twice at once
        failed one of them with EBADF (a cancellation then ended as an OSError)."""
        with self._killing:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            if not conn.closed:
                conn.close()
            if self._process is process:
                self._process, self._conn = None, None

    def close(self) -> None:
        """Ask the child to exit after its current job; kill it if it does not."""
        if self._process is None:
            return
        with contextlib.suppress(OSError):  # already gone
            self._conn.send(None)
        self._process.join(timeout=10)
        self.kill()
