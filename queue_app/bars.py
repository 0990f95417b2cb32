"""OHLCV bars in: CSV files checked row by row and loaded with COPY, and the offline sample data.

A file with any bad row changes nothing: every bad row is reported with its line number (BadRows).
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

from queue_app import gateway
from queue_app.errors import BadRows, Rejected

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
    """Parse and check every row; raise BadRows listing each bad line (header is line 1)."""
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    time_column = next((name for name in TIME_COLUMNS if name in header), None)
    missing = [name for name in PRICE_COLUMNS if name not in header]
    if time_column is None or missing:
        wanted = ", ".join(missing + ([] if time_column else ["ts (or date)"]))
        raise BadRows([f"line 1: header {','.join(header) or '(empty)'} lacks column(s): {wanted}"])
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
        raise BadRows(problems)
    return bars


def load(conn: psycopg.Connection, symbol: str, timeframe: str, bars: list[Bar]) -> tuple[int, int]:
    """Upsert bars with COPY in one transaction; returns (inserted, updated)."""
    return gateway.upsert_bars(conn, symbol, timeframe, bars)


def import_file(conn: psycopg.Connection, path: Path, symbol: str, timeframe: str) -> tuple[int, int]:
    """A CSV file (gzip-compressed when it ends in .gz), checked whole, then loaded; errors name the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # utf-8-sig: spreadsheets write a byte order mark that would otherwise hide the first column's name.
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            bars = parse_csv(handle)
    except FileNotFoundError:
        raise Rejected(f"no such file: {path}") from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        kind = "gzip-compressed UTF-8 CSV" if opener is gzip.open else "UTF-8 CSV"
        raise BadRows([f"cannot read the file as {kind} text: {exc}"], str(path)) from None
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None
    except BadRows as bad:
        raise BadRows(bad.problems, str(path)) from None
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
