"""`python -m bench --short` (every scenario, tiny sizes; the slowest in `scripts/test -m slow`) against
the test run's server: every row of the table has a number, and docs/BENCHMARKS.md is not touched (the
report goes to a temporary file). Goals are measured, not asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.__main__ import SCENARIOS
from tests.conftest import ROOT

EXPECTED = {
    "scale-out": [
        "wall time (a)",
        "wall time (b)",
        "wall time (c)",
        "wall time (d)",
        "wall time (e)",
        "efficiency",
    ],
    "no-op": ["throughput", "pickup p50 / p99", "ratio throughput sfq / bare"],
    "enqueue": [
        "HTTP POST /train at concurrency 50, req/s, 2,000 models",
        "latency p50 / p99, 2,000 models",
        "one per transaction, 8 connections, rows/s, 0 models",
        "one per transaction, 8 connections, prepared, rows/s, 2,000 models",
        "a daemon from before 0028 asleep (every commit notifies), rows/s, 2,000 models",
        "fill to 2,000 models",
        "one statement, rows/s, 2,000 models",
        "sweep of",
    ],
    "per-job cost": ["model ", "whole mix, sfq 1 worker"],
    "memory": ["recycling every", "recycling off"],
    "walk-forward": ["Ridge: ", "bytes per prediction"],
    "studies": [
        "planted signal: grid: best cv_ic",
        "planted signal: TPE + successive halving: best cv_ic",
        "real bars (AAPL): evolution: best cv_ic",
        "core-seconds pruning saved",
        "ask one trial (TPE) in a study of 50 trials",
    ],
    "reads": ["GET /models?sort=ic&limit=20, 2000 models", "GET /metrics, 2000 models", "sfq status"],
    "storage": [
        "queued: all tables",
        "completed (without its file): all tables",
        "a completed model's own record",
        "its results (predictions, features, fold metrics",
        "a completed model, without its file: all its rows",
        "with its default backtest run",
        "once per distinct file",
        "past the job retention: a completed model's own record",
        "all its rows, with its default backtest run",
    ],
    "sustained": [
        "rate (workers never idle)",
        "procrastinate_jobs: size",
        "bounded: peak bytes per held job",
    ],
    "fleet": [
        "settings",
        "idle database CPU",
        "idle statements/s, the most called",
        "pickup p50 / p99",
        "throughput",
        "oldest heartbeat while idle",
        "NOTIFY herd, fetches per job",
        "killed daemons, first / all taken up",
    ],
}


# The scenarios whose short mode takes longest (scale-out alone took 262 of 594 s, beside a loaded machine,
# 2026-12-02; the fleet's 50-90 s; the cost, memory and walk-forward ones 13-17 s each on a quiet machine,
# 2026-12-03, training real models) run in `scripts/test -m slow`, each on its own (its own 300 s), by their
# --scenario name and their table's label; the README's command runs the short mode of every other one.
SLOW = {
    "scaleout": "scale-out",
    "noop": "no-op",
    "studies": "studies",
    "sustained": "sustained",
    "fleet": "fleet",
    "cost": "per-job cost",
    "memory": "memory",
    "walkforward": "walk-forward",
}


@pytest.mark.parametrize(
    "slow",
    [None, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW)],
    ids=["quicker-scenarios", *SLOW],
)
def test_bench_short(database, tmp_path, slow):
    """`python -m bench --short` of the quicker scenarios together, or of one of the slowest: every
    expected row, with a figure, and docs/BENCHMARKS.md untouched."""
    assert set(SLOW) <= set(SCENARIOS)
    names = [name for name in SCENARIOS if name not in SLOW] if slow is None else [slow]
    labels = {SLOW[name] for name in names if name in SLOW}
    expected = {
        label: rows
        for label, rows in EXPECTED.items()
        if (label in labels if slow else label not in SLOW.values())
    }
    docs = ROOT / "docs" / "BENCHMARKS.md"
    before = docs.read_bytes() if docs.exists() else None
    server = make_conninfo(**{**conninfo_to_dict(database), "dbname": "postgres"})
    output = tmp_path / "bench.md"
    scenarios = [argument for name in names for argument in ("--scenario", name)]
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--short", "--output", str(output), *scenarios],
        env={**os.environ, "POSTGRES_URL": server},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not a speed check: speed is the benchmark's business, not the tests'
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        line.split(" | ")
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    rows = [(cells[0][2:], cells[1], cells[2].rstrip(" |")) for cells in rows[1:]]
    assert {scenario for scenario, _, _ in rows} == set(expected), result.stdout
    for scenario, measures in expected.items():
        for measure in measures:
            found = [value for s, m, value in rows if s == scenario and measure in m]
            assert found, f"no row {scenario} / {measure} in:\n{result.stdout}"
    for scenario, measure, value in rows:
        assert re.search(r"\d", value) or value == "skipped: no Redis", (scenario, measure, value)
        assert scenario != "error" and measure != "error", value
    text = output.read_text()
    assert f"| {next(iter(expected))} |" in text and "## Goals" in text and "cores:" in text
    assert (docs.read_bytes() if docs.exists() else None) == before, (
        "short mode must not write docs/BENCHMARKS.md"
    )
