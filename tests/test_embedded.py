"""sfq's private PostgreSQL cluster, used when POSTGRES_URL is unset: created, upgraded, stopped.

The CLI runs as a real subprocess without POSTGRES_URL and with SFQ_HOME in a fresh folder under /tmp.
We run as root, so the cluster runs as `postgres` (via runuser): the folder must be reachable by it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from queue_app import embedded

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("bars", "models", "training_requests", "features_log", "sfq_algorithms", "procrastinate_jobs")


def make_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="sfq-embedded-", dir="/tmp"))
    home.chmod(0o755)
    return home


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "POSTGRES_URL"}
    return {**env, "SFQ_HOME": str(home), **extra}


def sfq(*args: str, home: Path, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "queue_app.cli", *args],
        env=env_for(home, **extra),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _live(pid_dir: Path) -> bool:
    try:
        status = (pid_dir / "status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state not in ("Z", "X")


def postgres_processes(data: Path) -> set[int]:
    """Live processes whose command line names the data folder (the postmaster), and their children."""
    masters, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _live(entry):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(data).encode() in cmdline and b"-D" in cmdline:
            masters.add(int(entry.name))
    return masters | {pid for pid, parent in parents.items() if parent in masters}


def teardown_cluster(home: Path) -> None:
    data = home / "pg" / "data"
    try:
        result = sfq("db", "stop", home=home)
        if result.returncode != 0 and embedded.is_running(home):
            embedded.stop(home)
    finally:
        shutil.rmtree(embedded._socket_dir(data), ignore_errors=True)
        if not postgres_processes(data):
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """A private cluster created by a first `sfq db upgrade`; always stopped and removed at the end."""
    home = make_home()
    try:
        yield home, sfq("db", "upgrade", home=home)
    finally:
        teardown_cluster(home)


def test_first_upgrade_creates_and_starts_the_cluster_and_applies_the_schema(cluster):
    home, first = cluster
    data = home / "pg" / "data"
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert f"creating sfq's private PostgreSQL cluster in {data}" in first.stderr
    assert "started sfq's private PostgreSQL cluster" in first.stderr
    applied = first.stdout.strip()
    assert applied.startswith("applied: procrastinate/"), applied
    assert "migrations/0001_foundation.sql" in applied and "schema/registry.sql" in applied
    assert (data / "PG_VERSION").exists()
    owner = embedded._owner()  # `postgres` when we are root
    assert (data / "PG_VERSION").stat().st_uid == (owner.pw_uid if owner else os.geteuid())
    assert embedded.is_running(home)


def test_second_upgrade_is_up_to_date(cluster):
    home, _ = cluster
    again = sfq("db", "upgrade", home=home)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"
    assert "creating" not in again.stderr
    assert "started" not in again.stderr  # it was already running


def test_db_url_connects_to_the_private_cluster_with_the_schema(cluster):
    home, _ = cluster
    result = sfq("db", "url", home=home)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("postgresql://"), url
    assert url == embedded.url(home)
    with psycopg.connect(url) as conn:
        database, data_directory = conn.execute(
            "SELECT current_database(), current_setting('data_directory')"
        ).fetchone()
        assert database == embedded.DATABASE
        assert Path(data_directory) == home / "pg" / "data"  # the private cluster, not the test server
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""  # Unix socket only
        for table in TABLES:
            assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0], table
        migrations = {row[0] for row in conn.execute("SELECT name FROM sfq_migrations")}
        assert {"migrations/0001_foundation.sql", "schema/registry.sql"} <= migrations
        assert conn.execute("SELECT count(*) FROM sfq_algorithms").fetchone()[0] > 0
    models = sfq("models", home=home)  # other commands use the private cluster too
    assert models.returncode == 0, models.stderr
    assert models.stdout.split()[:2] == ["id", "status"]


def test_db_stop_stops_it_and_the_next_command_restarts_it(cluster):
    home, _ = cluster
    data = home / "pg" / "data"
    url = embedded.url(home)
    assert embedded.is_running(home)
    running = postgres_processes(data)
    master = int((data / "postmaster.pid").read_text().split()[0])
    assert master in running  # the process check sees the cluster while it runs

    stopped = sfq("db", "stop", home=home)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "stopped sfq's private PostgreSQL"
    assert not embedded.is_running(home)
    assert not (data / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()
    assert postgres_processes(data) == set()
    assert not any(_live(Path(f"/proc/{pid}")) for pid in running)

    twice = sfq("db", "stop", home=home)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout.strip() == "it was not running"

    restarted = sfq("db", "upgrade", home=home)
    assert restarted.returncode == 0, restarted.stderr
    assert "started sfq's private PostgreSQL cluster" in restarted.stderr
    assert "creating" not in restarted.stderr
    assert restarted.stdout.strip() == "database is up to date"  # the data survived the stop
    assert embedded.is_running(home)


def test_db_stop_refuses_a_server_it_does_not_manage():
    home = make_home()
    try:
        result = sfq("db", "stop", home=home, POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/postgres")
        assert result.returncode == 1
        assert result.stderr.strip() == "sfq: POSTGRES_URL is set: sfq does not manage that server"
        assert not (home / "pg").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_find_bindir_without_binaries_says_how_to_install(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SFQ_PG_BINDIR", str(empty))
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(embedded.glob, "glob", lambda pattern, *a, **k: [])
    monkeypatch.setattr(embedded.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(embedded.EmbeddedError) as raised:
        embedded.find_bindir()
    message = str(raised.value)
    assert "no PostgreSQL server binaries found" in message
    assert "apt-get install postgresql" in message
    assert "POSTGRES_URL=" in message

    # With binaries in SFQ_PG_BINDIR the same search finds them.
    for name in ("initdb", "pg_ctl"):
        (empty / name).write_text("#!/bin/sh\n")
        (empty / name).chmod(0o755)
    assert embedded.find_bindir() == empty


def _hide_system_postgresql() -> list[str] | None:
    """A command prefix running its command where /usr/lib/postgresql is empty (a private mount
    namespace), or None when this machine cannot make one."""
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if not (unshare and mount and os.geteuid() == 0 and Path("/usr/lib/postgresql").is_dir()):
        return None
    prefix = [
        unshare,
        "-m",
        "/bin/sh",
        "-c",
        f'{mount} -t tmpfs sfq-test /usr/lib/postgresql && exec "$@"',
        "sh",
    ]
    probe = subprocess.run(
        [*prefix, "/bin/sh", "-c", "ls -A /usr/lib/postgresql"], capture_output=True, text=True
    )
    return prefix if probe.returncode == 0 and probe.stdout.strip() == "" else None


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "url"], ["models"]])
def test_cli_without_binaries_says_how_to_install(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    home = make_home()
    hide = _hide_system_postgresql()
    if hide is None:
        # No mount namespace: make the search's directory glob find nothing inside the CLI process instead.
        hide = []
        program = [
            sys.executable,
            "-c",
            "import glob, sys; real = glob.glob; "
            "glob.glob = lambda p, *a, **k: [] if p.startswith('/usr/lib/postgresql') else real(p, *a, **k); "
            "sys.argv[0] = 'sfq'; from queue_app.cli import main; main()",
        ]
    else:
        program = [sys.executable, "-m", "queue_app.cli"]
    try:
        result = subprocess.run(
            [*hide, *program, *command],
            env=env_for(home, SFQ_PG_BINDIR=str(empty), PATH=str(empty)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == f"sfq: {embedded.INSTALL_HINT}"
        assert "apt-get install postgresql" in result.stderr and "export POSTGRES_URL=" in result.stderr
        assert result.stdout == ""
        assert not (home / "pg").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
