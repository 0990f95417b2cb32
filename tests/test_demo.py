"""The README's demo, run for real: it finishes on its own, trains on two workers, leaves nothing behind."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

from psycopg import sql

from tests.conftest import ROOT, TEST_ENV


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"  # a zombie has exited


def test_demo_trains_on_every_worker_and_stops_cleanly(server_url):
    name = f"sfq_demo_test_{secrets.token_hex(4)}"
    env = {
        **os.environ,
        **TEST_ENV,
        "POSTGRES_URL": server_url,
        "SFQ_DEMO_DATABASE": name,
        "SFQ_POLL_INTERVAL_S": "5",
    }
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "queue_app.cli", "demo", "--workers", "2"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        assert "9/9 completed" in output
        assert "(deduplicated: same fingerprint as an earlier request, not trained again)" in output
        worker_pids = {int(pid) for pid in re.findall(r"starting in process (\d+)", output)}
        assert len(worker_pids) == 2, output
        assert re.search(r"^\s+id\s+status\s+symbol\s+algorithm", output, re.MULTILINE)
        assert len(re.findall(r"^\s+\d+\s+completed\s", output, re.MULTILINE)) == 9
        spawned = {int(pid) for pid in re.findall(r"\[(\d+)\]", output)} | worker_pids
        assert spawned and not [pid for pid in spawned if _alive(pid)]
    finally:
        import psycopg

        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
