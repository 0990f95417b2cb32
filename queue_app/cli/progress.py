"""Live progress in the terminal (`sfq submit --wait`, `sfq watch`): one bar per model, redrawn in
place on a terminal, one line per change (status or phase) when the output is a file or a pipe."""

from __future__ import annotations

import sys
from typing import Any, TextIO

WIDTH = 24


def bar(row: dict[str, Any]) -> str:
    progress = row.get("progress") or {}
    status = row["status"]
    fraction = 1.0 if status == "completed" else float(progress.get("fraction") or 0.0)
    filled = round(fraction * WIDTH)
    phase = progress.get("phase", "") if status == "running" else status
    if status == "failed" and row.get("error"):
        phase = f"failed: {row['error'][:60]}"
    where = f"{row['worker_host']}:{row['worker_pid']}" if row.get("worker_pid") else ""
    return (
        f"model {row['id']:>6} {row.get('symbol') or '':<6} {row.get('algorithm') or '':<20} "
        f"[{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:>4.0%}  {phase:<24} {where}"
    ).rstrip()


class View:
    """Draws the latest rows: in place on a terminal, else the lines that changed."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.live = self.out.isatty()
        self.drawn = 0
        self.seen: dict[int, tuple[str, str]] = {}

    def show(self, rows: list[dict[str, Any]]) -> None:
        if self.live:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the block's first line, clear below
            lines = [bar(row) for row in rows]
            self.out.write("".join(line + "\n" for line in lines))
            self.drawn = len(lines)
        else:
            for row in rows:
                state = (row["status"], (row.get("progress") or {}).get("phase", ""))
                if self.seen.get(row["id"]) != state:
                    self.seen[row["id"]] = state
                    self.out.write(bar(row) + "\n")
        self.out.flush()
