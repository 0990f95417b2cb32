"""OHLCV bars in: CSV files checked row by row and loaded with COPY, and the offline sample data.

A file with any bad row changes nothing: every bad row is reported with its line number.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from queue_app.db import QUERIES

SAMPLE_SYMBOLS = ("AAPL", "MSFT", "IBM", "GOOG")
TIME_COLUMNS = ("ts", "timestamp", "datetime", "date", "time")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Bar:
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class BadBars(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} bad row(s), nothing imported:\n  {shown}{more}")


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _check(bar: Bar) -> str | None:
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(math.isfinite(v) for v in (*prices, bar.volume)):
        return "prices and volume must be finite numbers"
    if min(prices) <= 0:
        return "prices must be positive"
    if bar.high < max(bar.open, bar.close, bar.low) or bar.low > min(bar.open, bar.close):
        return f"high {bar.high} / low {bar.low} do not bracket open {bar.open} and close {bar.close}"
    if bar.volume < 0:
        return "volume must not be negative"
    return None


def parse_csv(lines: Iterable[str]) -> list[Bar]:
    """Parse and check every row; raise BadBars listing each bad line (header is line 1)."""
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    time_column = next((name for name in TIME_COLUMNS if name in header), None)
    missing = [name for name in PRICE_COLUMNS if name not in header]
    if time_column is None or missing:
        wanted = ", ".join(missing + ([] if time_column else ["ts (or date)"]))
        raise BadBars([f"line 1: header {','.join(header) or '(empty)'} lacks column(s): {wanted}"])
    positions = [header.index(name) for name in (time_column, *PRICE_COLUMNS)]
    bars, problems, seen = [], [], {}
    for row in reader:
        line = reader.line_num  # the physical line (a quoted field may span several)
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            ts, *numbers = (row[i] for i in positions)
            bar = Bar(_timestamp(ts), *(float(n) for n in numbers))
        except (IndexError, ValueError) as exc:
            problems.append(
                f"line {line}: {exc}" if not isinstance(exc, IndexError) else f"line {line}: too few columns"
            )
            continue
        if (problem := _check(bar)) is not None:
            problems.append(f"line {line}: {problem}")
        elif bar.ts in seen:
            problems.append(
                f"line {line}: duplicate timestamp {bar.ts.isoformat()} (also line {seen[bar.ts]})"
            )
        else:
            seen[bar.ts] = line
            bars.append(bar)
    if problems:
        raise BadBars(problems)
    return bars


def load(conn: psycopg.Connection, symbol: str, timeframe: str, bars: list[Bar]) -> tuple[int, int]:
    """Upsert bars with COPY in one transaction; returns (inserted, updated)."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(QUERIES["create_incoming_bars"])
        with cursor.copy(QUERIES["copy_incoming_bars"]) as copy:
            for bar in bars:
                copy.write_row(
                    (symbol, timeframe, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)
                )
        cursor.execute(QUERIES["upsert_incoming_bars"])
        flags = [row[0] for row in cursor.fetchall()]
    return sum(flags), len(flags) - sum(flags)


def import_file(conn: psycopg.Connection, path: Path, symbol: str, timeframe: str) -> tuple[int, int]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # utf-8-sig: spreadsheets write a byte order mark that would otherwise hide the first column's name.
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            bars = parse_csv(handle)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        kind = "gzip-compressed UTF-8 CSV" if opener is gzip.open else "UTF-8 CSV"
        raise BadBars([f"cannot read the file as {kind} text: {exc}"]) from None
    return load(conn, symbol.upper(), timeframe, bars)


def sample_bars() -> Iterator[tuple[str, list[Bar]]]:
    """Daily bars of AAPL, MSFT, IBM and GOOG from bokeh-sampledata (Quandl WIKI, public domain), 2000-2013.

    The source's prices are unadjusted; they are scaled by adj_close / close so that splits aren't crashes.
    """
    import bokeh_sampledata

    raw = Path(bokeh_sampledata.package_path("stocks.csv.gz")).read_bytes()
    rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")))
    by_symbol: dict[str, list[Bar]] = {symbol: [] for symbol in SAMPLE_SYMBOLS}
    for row in rows:
        if row["Ticker"] not in by_symbol:
            continue
        factor = float(row["Adj Close"]) / float(row["Close"])
        by_symbol[row["Ticker"]].append(
            Bar(
                _timestamp(row["Date"]),
                float(row["Open"]) * factor,
                float(row["High"]) * factor,
                float(row["Low"]) * factor,
                float(row["Close"]) * factor,
                float(row["Volume"]) / factor,
            )
        )
    yield from by_symbol.items()
