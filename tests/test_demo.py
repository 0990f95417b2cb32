"""The README's demo, run for real: it finishes on its own, trains on two workers, leaves nothing behind."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import pytest
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


@pytest.mark.slow  # the README's command runs the demo above and test_strategies.py's live records
def test_live_demo_forecasts_each_new_bar_and_prints_the_live_record(server_url):
    """`sfq demo --live` (issue 16): a strategy promoted, AAPL's two held-back days imported one at a time,
    a forecast made by a worker for each, the one their bars realise filled in, the live record printed."""
    name = f"sfq_demo_test_{secrets.token_hex(4)}"
    env = {**os.environ, **TEST_ENV, "POSTGRES_URL": server_url, "SFQ_DEMO_DATABASE": name}
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "queue_app.cli", "demo", "--live", "--workers", "1"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        assert re.search(
            r"history: aapl-daily/production -> model \d+ \(previous None\) by api via http at .+: 'demo: ",
            output,
        ), output
        days = re.findall(r"== day \d: a new AAPL bar, (\d{4}-\d\d-\d\d): sfq bars import", output)
        assert len(days) == 2, output
        assert output.count("AAPL 1d: 1 bars inserted, 0 updated") == 2, output
        # After the last day: the forecast at promotion and one per new bar, each answered.
        last = output.split(f"== day 2: a new AAPL bar, {days[1]}")[1].split("== GET /strategies")[0]
        rows = re.findall(r"^  forecast \d+\s+as of (\S+)  prediction [+-]\d\.\d+  (.+)$", last, re.MULTILINE)
        assert [as_of for as_of, _ in rows[1:]] == days, output
        assert rows[0][1].startswith("realised ") and rows[0][1].endswith(f"(bar {days[1]})"), output
        assert [outcome for _, outcome in rows[1:]] == [
            "not yet: needs bar as_of+2 (1 more bar)",
            "not yet: needs bar as_of+2 (2 more bars)",
        ], output
        assert "production model" in output and "forecasts 3, realised 1" in output, output
        assert re.search(r"^  live record: +n 1  directional accuracy \d\.\d{4}  ic ", output, re.MULTILINE)
        assert re.search(r"^  backtest: +n \d+  directional accuracy \d\.\d{4}  ic -?\d\.\d{4}", output, re.M)
        # One realised forecast, one paper-traded bar: too few for the decay flag's verdict.
        assert re.search(r"^  decay: +insufficient: 1 of the 10 paper-traded bars needed", output, re.M)
        assert "demo finished" in output
    finally:
        import psycopg

        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(f"{name}_live"))
            )
