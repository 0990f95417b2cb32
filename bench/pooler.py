"""A PgBouncer of our own in transaction mode, in front of a PostgreSQL server: what the polling mode
(SFQ_POOLER=transaction) is tested (tests/test_connections.py) and measured (bench.fleet) behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.common import free_port
from workers.daemon.child import die_with_parent

START_S = 30


def binary() -> str | None:
    """PgBouncer's executable (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


@dataclass(frozen=True)
class Bouncer:
    port: int
    pid: int

    def url(self, database_url: str) -> str:
        """`database_url`'s database and user, through this PgBouncer."""
        return make_conninfo(database_url, host="127.0.0.1", port=str(self.port))


@contextmanager
def pgbouncer(server_url: str, pool_size: int, max_clients: int) -> Iterator[Bouncer]:
    """PgBouncer (pool_mode=transaction, trust) in front of `server_url`'s server, every database: at most
    `pool_size` server connections per database and user, `max_clients` client ones; stopped at the end.
    Run as `postgres` when we are root (PgBouncer refuses root)."""
    executable = binary()
    if executable is None:
        raise FileNotFoundError("no pgbouncer binary (apt-get install pgbouncer; scripts/setup does as root)")
    server = conninfo_to_dict(server_url)
    user = server.get("user") or os.environ.get("USER", "postgres")
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="sfq-pgbouncer-", dir="/tmp"))
    home.chmod(0o755)  # readable by the postgres user it runs as when we are root
    (home / "userlist.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'userlist.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {max_clients}\n"
        "log_connections = 0\nlog_disconnections = 0\n"
    )
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    log = home / "pgbouncer.log"  # a file: a pipe nobody reads fills up, and PgBouncer blocks writing to it
    with log.open("w") as output:
        process = subprocess.Popen(
            [executable, *as_user, str(home / "pgbouncer.ini")],
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
    bouncer = Bouncer(port, process.pid)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"PgBouncer exited ({process.returncode}): {log.read_text()[-600:]}")
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(bouncer.url(server_url), connect_timeout=2),
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"PgBouncer not answering on port {port} after {START_S} s")
            time.sleep(0.1)
        yield bouncer
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)
