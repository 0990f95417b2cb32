"""`python -m bench [--short] [--scenario NAME ...] [--output PATH]`: run the scenarios side by side,
print a markdown table, and write it with the machine's description to docs/BENCHMARKS.md (or --output).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench import common
from queue_app.config import Settings, database_url

SCENARIOS = (
    "scaleout",
    "noop",
    "enqueue",
    "cost",
    "memory",
    "walkforward",
    "studies",
    "reads",
    "storage",
    "sustained",
    "fleet",
)
DEFAULT_OUTPUT = common.ROOT / common.DEFAULT_OUTPUT_NAME


def _scenario(name: str):
    from bench import (
        cost,
        enqueue,
        fleet,
        memory,
        noop,
        reads,
        scaleout,
        storage,
        studies,
        sustained,
        walkforward,
    )

    return {
        "scaleout": scaleout.scenario,
        "noop": noop.scenario,
        "enqueue": enqueue.scenario,
        "cost": cost.scenario,
        "memory": memory.scenario,
        "walkforward": walkforward.scenario,
        "studies": studies.scenario,
        "reads": reads.scenario,
        "storage": storage.scenario,
        "sustained": sustained.scenario,
        "fleet": fleet.scenario,
    }[name]


def render(command: str, info: dict[str, str], loads: list[tuple[str, str, str, float]], rows, short: bool):
    lines = [
        "| scenario | measure | value |",
        "|---|---|---|",
        *(f"| {s} | {m} | {v} |" for s, m, v in rows),
    ]
    table = "\n".join(lines)
    machine = "\n".join(f"- {key}: {value}" for key, value in info.items())
    load_lines = "\n".join(
        f"| {name} | {before} | {after} | {seconds:.1f} s |" for name, before, after, seconds in loads
    )
    doc = (
        f"`{command}` ({'short mode: tiny sizes, not for conclusions' if short else 'full run'}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n{machine}\n\n"
        "Load average (1, 5, 15 min) before and after each scenario (the machine may be shared):\n\n"
        "| scenario | before | after | took |\n|---|---|---|---|\n"
        f"{load_lines}\n\n{table}\n"
    )
    return table, doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--short", action="store_true", help="tiny sizes (what tests/test_bench.py runs)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the report (default {DEFAULT_OUTPUT}, not in --short mode)",
    )
    args = parser.parse_args(argv)
    command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    output = args.output or (None if args.short else DEFAULT_OUTPUT)
    settings = Settings.from_env()
    server = common.server_of(database_url(settings, quiet=True))
    info = common.machine(server)
    info["load average before the run"] = common.loadavg()
    databases = common.Databases(server)
    rows: list[tuple[str, str, str]] = []
    loads: list[tuple[str, str, str, float]] = []
    data: dict[str, dict] = {}
    failed = False
    try:
        for name in args.scenario or SCENARIOS:
            before, started = common.loadavg(), time.perf_counter()
            print(f"bench: {name} (load {before}) ...", file=sys.stderr, flush=True)
            try:
                with databases.scenario(name) as url:
                    result = _scenario(name)(url, args.short)
                rows += result["rows"]
                data[name] = result.get("data", {})
            except Exception as error:
                failed = True
                traceback.print_exc()
                rows.append((name, "error", f"{type(error).__name__}: {str(error)[:200]}".replace("|", "/")))
            loads.append((name, before, common.loadavg(), time.perf_counter() - started))
    finally:
        databases.close()
    info["load average after the run"] = common.loadavg()
    table, doc = render(command, info, loads, rows, args.short)
    print(table)
    if output:
        from bench import report

        previous = output.read_text() if output.exists() else None
        output.write_text(report.document(doc, data, args.short, previous))
        print(f"bench: written to {output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
