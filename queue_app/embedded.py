"""sfq's private PostgreSQL cluster, used when POSTGRES_URL is unset.

It lives in `$SFQ_HOME/pg` (default `./.sfq/pg`), is built from the system's PostgreSQL binaries,
listens on a Unix socket only, and runs as the `postgres` user when sfq runs as root (PostgreSQL
refuses to run as root).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from queue_app.errors import Unavailable

DATABASE = "sfq"
PORT = 5432  # only names the socket file: the cluster listens on no TCP port

INSTALL_HINT = (
    "no PostgreSQL server binaries found (initdb, pg_ctl).\n"
    "  Install them (Debian/Ubuntu: apt-get install postgresql) or point sfq at a server:\n"
    "  export POSTGRES_URL=postgresql://USER@HOST:5432/DBNAME"
)


class EmbeddedError(Unavailable):
    """The private cluster could not be created or started; the message says what to do."""


def find_bindir() -> Path:
    candidates = [os.environ.get("SFQ_PG_BINDIR", "")]
    if shutil.which("pg_config"):
        candidates.append(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        )
    installed = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(installed, key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    candidates += [str(Path(p).parent) for p in filter(None, [shutil.which("initdb")])]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise EmbeddedError(INSTALL_HINT)


def _socket_dir(data: Path) -> Path:
    # Unix socket paths are limited to ~107 bytes, so the socket lives under /tmp, keyed by the data dir.
    digest = hashlib.sha256(str(data).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sfq-pg-{digest}"


def _owner() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: `postgres` when we are root, ourselves otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise EmbeddedError("running as root, but there is no `postgres` user to run PostgreSQL as") from None


def _run(args: list[str], owner: pwd.struct_passwd | None, **kwargs) -> subprocess.CompletedProcess:
    command = ["runuser", "-u", owner.pw_name, "--", *args] if owner else args
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def _reachable_by_others(path: Path) -> bool:
    """Can a user other than the owner (PostgreSQL's, when we are root) traverse to `path`?"""
    existing = [p for p in (path, *path.parents) if p.exists()]
    return all(p.stat().st_mode & 0o001 for p in existing)


def _cluster_dir(home: Path) -> Path:
    """`$SFQ_HOME/pg`, unless we are root and the postgres user cannot reach it (a checkout under /root,
    say): then a folder under /var/tmp named after the home, so the same home finds the same cluster."""
    if os.geteuid() != 0 or _reachable_by_others(home):
        return home / "pg"
    return Path("/var/tmp") / f"sfq-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}" / "pg"


def _paths(home: Path) -> tuple[Path, Path, Path]:
    cluster = _cluster_dir(home)
    data = cluster / "data"
    return data, _socket_dir(data), cluster / "postgres.log"


def url(home: Path) -> str:
    _, sockets, _ = _paths(home)
    return f"postgresql://postgres@/{DATABASE}?host={sockets}&port={PORT}"


def is_running(home: Path) -> bool:
    data, _, _ = _paths(home)
    if not (data / "postmaster.pid").exists():
        return False
    return _run([str(find_bindir() / "pg_ctl"), "status", "-D", str(data)], _owner()).returncode == 0


def ensure_running(home: Path, *, quiet: bool = False, server: Mapping[str, str] | None = None) -> str:
    """Create the cluster if needed, start it if stopped, and return its URL. `server`: settings that
    override sfq's when it starts (the fleet benchmark's cluster: more connections, pg_stat_statements)."""
    bindir, owner = find_bindir(), _owner()
    data, sockets, log = _paths(home)
    say = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))
    if not (data / "PG_VERSION").exists():
        say(f"sfq: POSTGRES_URL is unset; creating sfq's private PostgreSQL cluster in {data}")
        data.mkdir(parents=True, exist_ok=True)
        if owner:
            for path in (data.parent, data):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            data.parent.parent.chmod(0o755)
        result = _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            owner,
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"initdb failed in {data}:\n{result.stderr.strip()}\n"
                "  (when running as root, the postgres user must be able to reach that folder; "
                "set SFQ_HOME to one it can, or set POSTGRES_URL)"
            )
    if not is_running(home):
        sockets.mkdir(mode=0o700, exist_ok=True)
        if owner:
            os.chown(sockets, owner.pw_uid, owner.pw_gid)
            log.touch()
            os.chown(log, owner.pw_uid, owner.pw_gid)
        settings = {"max_connections": "200", "fsync": "on", **(server or {})}
        options = f"-c listen_addresses='' -k {sockets} -p {PORT} " + " ".join(
            f"-c {name}={value}" for name, value in settings.items()
        )
        result = _run(
            [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-o", options], owner
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedError(f"could not start the private cluster:\n{result.stderr.strip()}\n{tail}")
        say(f"sfq: started sfq's private PostgreSQL cluster ({data}); `sfq db stop` stops it")
        _ensure_database(bindir, owner, sockets)
    return url(home)


def _ensure_database(bindir: Path, owner: pwd.struct_passwd | None, sockets: Path) -> None:
    psql = [
        str(bindir / "psql"),
        "-h",
        str(sockets),
        "-p",
        str(PORT),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-tAc",
    ]
    exists = _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], owner).stdout.strip()
    if exists != "1":
        _run([*psql, f"CREATE DATABASE {DATABASE}"], owner, check=True)


def stop(home: Path) -> bool:
    """Stop the private cluster; False when it was not running."""
    if not is_running(home):
        return False
    data, _, _ = _paths(home)
    _run([str(find_bindir() / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"], _owner(), check=True)
    return True
