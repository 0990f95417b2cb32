"""What every scenario shares: throwaway databases, the machine's description, load averages, real
`sfq` processes with their output collected, and waiting on models."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from queue_app import bars, gateway
from workers.daemon.child import THREAD_LIMIT_ENV, die_with_parent

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_NAME = "docs/BENCHMARKS.md"
CORES = os.cpu_count() or 1
# Every process that trains (sfq's training processes, the pools, Celery's children) gets the same
# one-thread BLAS/OpenMP limit sfq's workers set, so the comparison is of architectures, not of threading.
BENCH_ENV = {**THREAD_LIMIT_ENV, "PYTHONUNBUFFERED": "1"}


def process_cpu_s(pid: int) -> float:
    """utime + stime + reaped children's cutime + cstime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Children started by any of the process's threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ...: a worker daemon's fork server and the training processes it forks."""
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine(server_url: str) -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    with gateway.connect(server_url, "sfq-bench", autocommit=True) as conn:
        pg = conn.info.parameter_status("server_version")  # as SHOW server_version says it
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cores": str(CORES),
        "cpu": cpu,
        "ram": f"{mem_kb / 2**20:.1f} GiB",
        "postgresql": pg,
        "python": platform.python_version(),
        "sfq commit": commit,
        "host": socket.gethostname(),
    }


class Databases:
    """Throwaway databases on one server: a template (schema upgraded, sample bars loaded) is built
    once, and each scenario gets a copy of it (CREATE DATABASE ... TEMPLATE), dropped at the end."""

    def __init__(self, server_url: str):
        self.server_url = server_url
        self.template: str | None = None
        self.created: list[str] = []

    def _build_template(self) -> None:
        name = f"sfq_bench_template_{secrets.token_hex(4)}"
        self.created.append(name)
        url = gateway.recreate_database(self.server_url, name)
        # The schema as an operator installs it: `sfq db upgrade`.
        subprocess.run(
            [sys.executable, "-m", "queue_app.cli", "db", "upgrade"],
            env={**os.environ, "POSTGRES_URL": url},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
            for symbol, rows in bars.sample_bars():
                bars.load(conn, symbol, "1d", rows)
        self.template = name

    @contextmanager
    def scenario(self, label: str) -> Iterator[str]:
        if self.template is None:
            self._build_template()
        name = f"sfq_bench_{label}_{secrets.token_hex(4)}"
        url = gateway.recreate_database(self.server_url, name, template=self.template)
        try:
            yield url
        finally:
            gateway.drop_database(self.server_url, name)

    def close(self) -> None:
        for name in self.created:
            gateway.drop_database(self.server_url, name)


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database with sfq's schema (`db.upgrade`), its URL; dropped at the end."""
    from queue_app import db

    name = f"{prefix}_{secrets.token_hex(4)}"
    url = gateway.recreate_database(server_url, name)
    try:
        db.upgrade(url)
        yield url
    finally:
        gateway.drop_database(server_url, name)


def server_of(url: str) -> str:
    """The server's maintenance database (for CREATE/DROP DATABASE)."""
    params = conninfo_to_dict(url)
    params["dbname"] = "postgres"
    return make_conninfo(**params)


class Process:
    """A real process (an `sfq` command by default) whose output is collected."""

    def __init__(self, args: list[str], env: dict[str, str], module: str = "queue_app.cli"):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args] if module else args,
            env={**os.environ, **BENCH_ENV, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        seen = 0
        while time.monotonic() < deadline:
            lines = list(self.lines)
            for line in lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(lines)
            if self.popen.poll() is not None and len(self.lines) == seen:
                raise RuntimeError(
                    f"process exited ({self.popen.returncode}) before {pattern!r}:\n" + "\n".join(self.lines)
                )
            time.sleep(0.02)
        raise RuntimeError(
            f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.lines[-30:])
        )

    def send(self, text: str) -> None:
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        return self.popen.returncode


@contextmanager
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()


def start_sfq_workers(started: list[Process], url: str, count: int, **env: str) -> list[Process]:
    """`sfq worker 1..count` (what systemd's worker@N runs), started together, each ready."""
    workers = [Process(["worker", str(i)], {"POSTGRES_URL": url, **env}) for i in range(1, count + 1)]
    started.extend(workers)
    for worker in workers:
        worker.wait_for_line(r"worker \d+ ready", timeout=120)
    return workers


def wait_for_models(url: str, model_ids: list[int], timeout: float, runner: Process | None = None) -> float:
    """Poll (every 20 ms) until every model is finished, and the default backtest each completed model
    gets (in its result transaction) too; returns time.perf_counter() at that moment. Gives up when
    `runner` (the process running them) has exited."""
    deadline = time.monotonic() + timeout
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        while time.monotonic() < deadline:
            if (
                runner is not None
                and runner.popen.poll() is not None
                and len(runner.lines)
                and "{" not in runner.lines[-1]
            ):
                raise RuntimeError("runner exited:\n" + "\n".join(runner.lines[-20:]))
            if gateway.run(conn, gateway.models_unsettled(model_ids)) == 0:
                done = time.perf_counter()
                models = gateway.run(conn, gateway.models_progress(model_ids))
                if failed := [(m["id"], m["error"]) for m in models if m["status"] != "completed"]:
                    raise RuntimeError(f"models did not complete: {failed[:3]}")
                return done
            time.sleep(0.02)
    raise RuntimeError(f"{len(model_ids)} models not finished within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable() -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        return bool(redis.Redis.from_url(redis_url(), socket_connect_timeout=1).ping())
    except Exception:
        return False


def new_figure(rows: int = 1, figsize: tuple[float, float] = (10, 6), **subplots: Any) -> tuple[Any, Any]:
    """A chart's matplotlib figure and its axes (`rows` of them, one above the other), without pyplot:
    headless, and no global state to close."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, 1, **subplots)


def save_chart(figure: Any, path: Path, short: bool) -> str | None:
    """The chart drawn to `path` (under docs/), and that path from the repository's root for the report;
    --short draws it to a temporary file, removed at once (the drawing is what the short run checks), and
    names none."""
    figure.tight_layout()
    if short:
        with tempfile.TemporaryDirectory(prefix="sfq-bench-chart-") as folder:
            figure.savefig(Path(folder) / path.name, dpi=100)
        return None
    figure.savefig(path, dpi=100)
    return str(path.relative_to(ROOT))
