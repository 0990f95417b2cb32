"""`python -m bench.bars_parquet [--rows N] [--dir DIR]`: the Parquet bars import at scale (issue 16).

Writes N synthetic minute bars of ONE symbol (a random walk from 2000-01-03, one bar a minute, naive
timestamps = UTC) to a Parquet file (zstd, row groups of 1M, written a million rows at a time), then
runs the real CLI, `sfq bars import FILE.parquet --symbol SYN --timeframe 1m`, as a child process into a
fresh database (dropped at the end), and prints its wall time, rows/s and peak RSS (the child's
ru_maxrss). POSTGRES_URL names the server (a superuser: the database is created and dropped).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from bench.common import scratch_database

CHUNK = 1_000_000


def session_minutes(first: int, n: int) -> np.ndarray:
    """Equity-session minute bars `first` to `first + n`: 390 a weekday (14:30 to 20:59 UTC) from
    2015-01-02, holidays ignored."""
    index = np.arange(first, first + n)
    days = np.busday_offset(np.datetime64("2015-01-02", "D"), index // 390, roll="forward")
    return days.astype("datetime64[us]") + ((14 * 60 + 30 + index % 390) * 60_000_000).astype(
        "timedelta64[us]"
    )


def write_bars(path: Path, rows: int, seed: int = 16, session: bool = False) -> None:
    """`rows` bars of a random walk: one a minute from 2000-01-03 around the clock, or (`session`) only in
    equity sessions (session_minutes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    start = np.datetime64("2000-01-03T00:00", "us")
    price = 100.0
    schema = pa.schema(
        [("ts", pa.timestamp("us"))]
        + [(name, pa.float64()) for name in ("open", "high", "low", "close", "volume")]
    )
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for first in range(0, rows, CHUNK):
            n = min(CHUNK, rows - first)
            close = price * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
            open_ = np.r_[price, close[:-1]]
            spread = np.abs(rng.normal(0, 0.0003, n)) * close
            high = np.maximum(open_, close) + spread
            low = np.minimum(open_, close) - spread
            volume = rng.integers(0, 10_000, n).astype(np.float64)
            if session:
                ts = session_minutes(first, n)
            else:
                ts = start + (np.arange(first, first + n) * 60_000_000).astype("timedelta64[us]")
            table = pa.table(
                {"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}, schema
            )
            writer.write_table(table, row_group_size=CHUNK)
            price = float(close[-1])


def sfq_import(url: str, path: Path, symbol: str) -> subprocess.CompletedProcess:
    """The real CLI, `sfq bars import FILE --symbol SYMBOL --timeframe 1m`, as a child process into the
    database at `url`; exits saying why when the import fails."""
    result = subprocess.run(
        [sys.executable, "-m", "queue_app.cli", "bars", "import", str(path), "--symbol", symbol]
        + ["--timeframe", "1m"],
        env={**os.environ, "POSTGRES_URL": url},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"import of {symbol} failed: {result.stderr}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the file is written (default: a temp dir)"
    )
    args = parser.parse_args()
    server = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bars.parquet"
        began = time.monotonic()
        write_bars(path, args.rows)
        print(
            f"wrote {args.rows:,} minute bars of one symbol: {path.stat().st_size / 2**20:.0f} MiB "
            f"in {time.monotonic() - began:.1f} s",
            flush=True,
        )
        with scratch_database(server, "sfq_bench_parquet") as url:
            began = time.monotonic()
            result = sfq_import(url, path, "SYN")
            elapsed = time.monotonic() - began
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(result.stdout.strip())
            print(
                f"import: {args.rows:,} rows in {elapsed:.1f} s = {args.rows / elapsed:,.0f} rows/s; "
                f"peak RSS of the sfq process {peak_mib:.0f} MiB",
                flush=True,
            )
            with psycopg.connect(url) as conn:
                count, revisions = conn.execute(
                    "SELECT (SELECT count(*) FROM bars WHERE symbol = 'SYN'),"
                    " (SELECT coalesce(sum(revision), 0) FROM bar_revisions)"
                ).fetchone()
            print(f"bars stored: {count:,}; bar revisions: {revisions}")


if __name__ == "__main__":
    main()
