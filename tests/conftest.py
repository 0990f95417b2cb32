"""Fixtures: a throwaway database per test run on a real PostgreSQL, real worker and API processes.

The server is POSTGRES_URL's, or sfq's private cluster when it is unset. Each run creates its own
database (sfq_test_<random>), upgrades it, loads the sample bars, and drops it at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from queue_app import bars, db, embedded
from queue_app.config import Settings, database_url
from workers.daemon.child import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
# Workers in tests poll rarely, so a job that starts at once was woken by LISTEN/NOTIFY.
TEST_ENV = {"SFQ_POLL_INTERVAL_S": "300", "PYTHONUNBUFFERED": "1"}
# A training of about 5-10 s on one core (with a symbol): long enough to interrupt, kill or sample.
SLOW = {
    "algorithm": "RandomForest",
    "train_window": 1500,
    "test_window": 250,
    "cv_folds": 2,
    "hyperparameters": json.dumps({"n_estimators": 150}),
}
# Rescue quickly in tests: heartbeats every second, a worker silent for 3 s is presumed dead.
QUICK_RESCUE = {"SFQ_HEARTBEAT_S": "1", "SFQ_RESCUE_AFTER_S": "3"}


PRIVATE_CLUSTER = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Once per run, in the main pytest process: without POSTGRES_URL, start sfq's private cluster and
    point POSTGRES_URL at it, so that every test process (pytest-xdist's workers inherit the
    environment) and every process the tests start use that one server."""
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the main process did it
        return
    settings = Settings.from_env()
    if settings.postgres_url is None:
        started_here = not embedded.is_running(settings.home)
        os.environ["POSTGRES_URL"] = database_url(settings, quiet=True)
        if started_here:
            config.stash[PRIVATE_CLUSTER] = settings.home


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the private cluster if this run started it."""
    if (home := config.stash.get(PRIVATE_CLUSTER, None)) is not None:
        embedded.stop(home)


@pytest.fixture(scope="session")
def server_url() -> str:
    """POSTGRES_URL's server (the private cluster's when it was unset: pytest_configure)."""
    return os.environ["POSTGRES_URL"]


def _create_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def make_database(server_url):
    """Factory for extra throwaway databases (dropped at the end of the run)."""
    created: list[str] = []

    def make(prefix: str = "sfq_test") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        created.append(name)
        return _create_database(server_url, name)

    yield make
    for name in created:
        _drop_database(server_url, name)


@pytest.fixture(scope="session")
def database(make_database) -> str:
    """The run's database: schema upgraded, sample bars (AAPL, MSFT, IBM, GOOG daily) loaded."""
    url = make_database()
    db.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            bars.load(conn, symbol, "1d", rows)
    return url


@pytest.fixture
def private_cluster() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL of this test's own (sfq's private cluster in a temporary home), so that it can be
    stopped and restarted; schema upgraded, AAPL and MSFT daily bars loaded. Yields (home, url)."""
    home = Path(tempfile.mkdtemp(prefix="sfq-home-", dir="/tmp"))
    home.chmod(0o755)  # reachable by the postgres user when we are root
    try:
        url = embedded.ensure_running(home, quiet=True)
        db.upgrade(url)
        with psycopg.connect(url, autocommit=True) as connection:
            for symbol, rows in bars.sample_bars():
                if symbol in ("AAPL", "MSFT"):
                    bars.load(connection, symbol, "1d", rows)
        yield home, url
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def conn(database) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database, autocommit=True) as connection:
        yield connection


@pytest.fixture
def clean(conn) -> psycopg.Connection:
    """An empty queue: no models, requests, sweeps, studies or jobs (bars stay)."""
    conn.execute(
        "TRUNCATE models, training_requests, model_features, model_predictions, model_artifacts, blobs,"
        " sweeps, studies, sfq_workers, sfq_sleepers, procrastinate_jobs, procrastinate_events,"
        " procrastinate_workers RESTART IDENTITY CASCADE"
    )
    conn.execute("UPDATE sfq_fleet_round SET jobs_before = 0")  # the jobs' ids start again
    return conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A real `sfq ...` process whose output is collected, for assertions on its log."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "queue_app.cli", *args],
            env={**os.environ, **TEST_ENV, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # a killed test run leaves no worker behind
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

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 180) -> re.Match:
        # 180 s: a worker's start (scikit-learn imported by its fork server, a training process forked)
        # took over 60 s with both cores loaded by other test runs; a line that comes returns at once.
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.popen.poll() is not None:
                self._reader.join(timeout=2)
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                raise AssertionError(
                    f"process exited ({self.popen.returncode}) before {pattern!r}:\n{self.output}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.output}")

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


class Sampler:
    """Samples, every `every_s` until stopped, what `sample()` returns while `training()` is true."""

    def __init__(self, sample: Callable[[], Any], training: Callable[[], bool], every_s: float = 0.02):
        self.samples: list[Any] = []
        self._sample, self._training, self._every_s = sample, training, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._training():
                self.samples.append(self._sample())
            time.sleep(self._every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def most(self, key: str) -> int:
        return max(sample[key] for sample in self.samples)


@pytest.fixture
def start_worker(database):
    """Start real `sfq worker N` daemons on the run's database; all are stopped after the test."""
    started: list[Process] = []

    def start(instance: int = 1, url: str | None = None, **env: str) -> Process:
        worker = Process(["worker", str(instance)], {"POSTGRES_URL": url or database, **env})
        started.append(worker)
        worker.wait_for_line(r"worker \d+ ready")
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_api(database):
    started: list[Process] = []

    def start(url: str | None = None) -> str:
        port = free_port()
        api = Process(["api", "--port", str(port)], {"POSTGRES_URL": url or database})
        started.append(api)
        api.wait_for_line(r"Uvicorn running on")
        return f"http://127.0.0.1:{port}"

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def api(start_api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=start_api(), timeout=30) as client:
        yield client


def wait_for_models(conn: psycopg.Connection, model_ids: list[int], timeout: float = 120) -> dict[int, dict]:
    """Block until every model is completed, failed or cancelled; returns id -> row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = conn.execute(
            "SELECT id, status::text, error, metrics, worker_pid, attempts FROM models WHERE id = ANY(%s)",
            (model_ids,),
        ).fetchall()
        if len(rows) == len(model_ids) and all(r[1] in ("completed", "failed", "cancelled") for r in rows):
            keys = ("id", "status", "error", "metrics", "worker_pid", "attempts")
            return {r[0]: dict(zip(keys, r, strict=True)) for r in rows}
        time.sleep(0.1)
    raise AssertionError(f"models {model_ids} not finished within {timeout} s: {rows}")


def run_sfq(*args: str, url: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run the real CLI against the database at `url`, with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "queue_app.cli", *args],
        env={**os.environ, "POSTGRES_URL": url, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.05)


def taken_by(conn: psycopg.Connection, model_id: int, workers: list[Process]) -> tuple[Process, Process]:
    """(the worker whose pid the model's row shows, the other one), once a worker has taken the job."""
    deadline = time.monotonic() + 180
    while (
        pid := conn.execute("SELECT worker_pid FROM models WHERE id = %s", (model_id,)).fetchone()[0]
    ) is None:
        assert time.monotonic() < deadline, [w.output for w in workers]
        time.sleep(0.05)
    (taker,) = [w for w in workers if w.pid == pid]
    (other,) = [w for w in workers if w.pid != pid]
    return taker, other


def wait_for_jobs(conn: psycopg.Connection, timeout: float = 30) -> dict[int, str]:
    """Block until no job is todo or doing (a job ends just after its model, a backtest just after its
    training); returns the training jobs' model id -> status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = conn.execute(
            "SELECT task_name, (args->>'model_id')::int, status::text FROM procrastinate_jobs"
        ).fetchall()
        if all(status not in ("todo", "doing") for _, _, status in rows):
            return {model_id: status for task, model_id, status in rows if task == "train_model"}
        time.sleep(0.05)
    raise AssertionError(f"jobs still running after {timeout} s: {rows}")


def insert_request(conn: psycopg.Connection, columns: dict) -> tuple[int, str, bool]:
    """A plain SQL INSERT INTO training_requests, as another service would write it."""
    query = sql.SQL(
        "INSERT INTO training_requests ({}) VALUES ({}) RETURNING model_id, fingerprint, deduplicated"
    ).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))
    )
    return conn.execute(query, list(columns.values())).fetchone()
