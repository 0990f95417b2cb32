"""`python -m bench.bars_history [--symbols 100] [--years 10]`: a minute-bar history at scale (issue 15).

Imports SYMBOLS x YEARS of equity-session minute bars (252 days a year, 390 bars a day: 98,280 a year;
100 symbols x 10 years = 98.3 million rows) into a fresh database (dropped at the end), one symbol at a
time through the real CLI (`sfq bars import FILE.parquet`, streamed through COPY with every row check;
bench.bars_parquet writes each file, then it is deleted), and prints the import rate as the table grows.
Then loads one symbol's latest year (98,280 bars) the way a worker does (the `load_bars` query into a
DataFrame, workers/daemon/data.py) ROUNDS times. bars' primary key (symbol, timeframe, ts) is what both
use: a symbol's bars are one range of it. POSTGRES_URL names the server (a superuser).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from bench.bars_parquet import sfq_import, write_bars
from bench.common import scratch_database
from queue_app import gateway
from workers.daemon.data import frame

BARS_PER_YEAR = 252 * 390
ROUNDS = 7


def _import(url: str, path: Path, symbol: str) -> float:
    began = time.monotonic()
    sfq_import(url, path, symbol)
    return time.monotonic() - began


def _load_year(url: str, symbol: str, rounds: int = ROUNDS) -> list[float]:
    """Milliseconds to load the symbol's latest year into a DataFrame, `rounds` times (the first cold-ish)."""
    timings = []
    with psycopg.connect(url) as conn:
        for _ in range(rounds):
            began = time.perf_counter()
            bars = frame(gateway.run(conn, gateway.load_bars(symbol, "1m", "infinity", BARS_PER_YEAR)))
            timings.append((time.perf_counter() - began) * 1000)
            assert len(bars) == BARS_PER_YEAR, len(bars)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where each file is written (default: a temp dir)"
    )
    args = parser.parse_args()
    server = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    per_symbol = args.years * BARS_PER_YEAR
    with scratch_database(server, "sfq_bench_history") as url:
        seconds: list[float] = []
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            path = Path(tmp) / "bars.parquet"
            for i in range(args.symbols):
                write_bars(path, per_symbol, seed=i, session=True)
                seconds.append(_import(url, path, f"S{i:03d}"))
                if (i + 1) % 10 == 0 or i + 1 == args.symbols:
                    recent, load = seconds[-10:], _load_year(url, "S000", 3)
                    print(
                        f"{i + 1} symbols, {(i + 1) * per_symbol:,} rows: last {len(recent)} at "
                        f"{len(recent) * per_symbol / sum(recent):,.0f} rows/s; a year of S000 loads in "
                        f"{statistics.median(load):.0f} ms (median of 3)",
                        flush=True,
                    )
        total = args.symbols * per_symbol
        with psycopg.connect(url) as conn:
            (stored, table_bytes, index_bytes) = conn.execute(
                "SELECT (SELECT count(*) FROM bars), pg_table_size('bars'), pg_indexes_size('bars')"
            ).fetchone()
        assert stored == total, (stored, total)
        print(
            f"import: {total:,} rows ({args.symbols} symbols x {args.years} years) in {sum(seconds):.0f} s = "
            f"{total / sum(seconds):,.0f} rows/s; per symbol median {statistics.median(seconds):.1f} s "
            f"(min {min(seconds):.1f}, max {max(seconds):.1f}); bars {table_bytes / 2**30:.1f} GiB + "
            f"indexes {index_bytes / 2**30:.1f} GiB",
            flush=True,
        )
        timings = _load_year(url, f"S{args.symbols // 2:03d}")
        print(
            f"load one symbol's latest year ({BARS_PER_YEAR:,} bars) into a DataFrame: "
            f"first {timings[0]:.0f} ms, then median {statistics.median(timings[1:]):.0f} ms "
            f"(min {min(timings[1:]):.0f}, max {max(timings[1:]):.0f}, {ROUNDS - 1} rounds)",
            flush=True,
        )


if __name__ == "__main__":
    main()
