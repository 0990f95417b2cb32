"""The training process: a child of the worker daemon that trains, one job at a time. It holds no database
connection: the daemon sends each job's bars with it and writes the progress the child sends back.

Training runs here rather than in a thread of the daemon so that the daemon's event loop (heartbeats,
LISTEN/NOTIFY) keeps running through long native calls, a crash in native code fails only the job,
and the work can be killed. The child is recycled after `max_jobs` jobs to keep memory bounded.

Children come from a fork server that imported scikit-learn and pandas once, when the daemon
started: a fresh child costs a fork (milliseconds) instead of a new interpreter importing them again
(about 1.5 s of a core, which recycling paid every `max_jobs` jobs, on the job's critical path). The
fork server holds no connection and runs no thread, so forking it is safe; it exits when the daemon
dies, and its children die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from workers.daemon.outcome import Completed, Failed, FoldScored, Outcome, Progress, Pruned, Retry

if TYPE_CHECKING:
    import pandas as pd

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
PRELOAD = ["threadpoolctl", "workers.modelling.training"]


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


def _child_main(conn: Connection) -> None:
    """Loop: receive (spec, bars, context bars), answer with its Outcome (Completed or Failed), after a
    Progress as each phase starts and a FoldScored as each CV fold ends; None ends the loop."""
    die_with_parent()  # a worker killed with SIGKILL takes its training with it
    from threadpoolctl import threadpool_limits

    from workers.modelling.training import LOADED, TrainingError, train

    threadpool_limits(1)
    progress = lambda phase, fraction: conn.send(Progress(phase, fraction))  # noqa: E731
    on_fold = lambda fold: conn.send(FoldScored(fold))  # noqa: E731
    while (job := conn.recv()) is not None:
        spec, bars, context = job
        try:
            progress("features", LOADED)
            conn.send(Completed(train(spec, bars, context=context, progress=progress, on_fold=on_fold)))
        except TrainingError as error:
            conn.send(Failed(str(error)))
        except Exception as error:  # an estimator's error is the job's failure, not the process's
            conn.send(Failed(f"{type(error).__name__}: {error}"))


class TrainingProcess:
    """Owns one training child: starts it on demand, recycles it, and reports how it died."""

    def __init__(self, max_jobs: int):
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
            target=_child_main, args=(child,), name="sfq-training", daemon=True
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
        bars: pd.DataFrame,
        context: dict[str, pd.DataFrame],
        timeout_s: float,
        memory_limit_mb: int,
        on_fold: Callable[[dict[str, Any]], str | None] = lambda fold: None,
        on_progress: Callable[[str, float], None] = lambda phase, fraction: None,
    ) -> Outcome:
        """Train in the child; kill it at the deadline, above the memory limit, on `interrupt()`, or when
        `on_fold` (told each CV fold's scores as it ends, in a thread) gives a reason to prune it;
        `on_progress` is told each phase as it starts (in that thread too). Every end is an Outcome;
        only a cancellation (the job aborted) raises, once the child is killed."""
        if self._interrupted:  # shutting down: do not start another training
            return Retry(f"interrupted: {self._interrupted}", at_once=True)
        limits = (time.monotonic() + timeout_s, timeout_s, memory_limit_mb, on_fold, on_progress)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._send_and_wait, (spec, bars, context), limits
            )
        except asyncio.CancelledError:
            self.kill()
            raise

    def _send_and_wait(self, job: tuple, limits: tuple) -> Outcome:
        """Off the event loop: a job's bars may take a moment to go through the pipe."""
        try:
            self._send(job)
        except OSError as error:  # cannot fork now
            return Retry(str(error))
        return self._wait_for_answer(*limits)

    def _send(self, job: tuple) -> None:
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
        self,
        deadline: float,
        timeout_s: float,
        memory_limit_mb: int,
        on_fold: Callable[[dict], str | None],
        on_progress: Callable[[str, float], None],
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
            if isinstance(message, Progress):
                on_progress(message.phase, message.fraction)
                continue
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
