"""OHLCV bars in: CSV and Parquet files checked row by row and streamed into COPY; the offline sample data.

A file with any bad row changes nothing: every bad row is reported with its line number (CSV, the header
is line 1) or row number (Parquet, the first row is row 1) (BadRows). Both formats go through the same
checks (RowChecks) and the same COPY into a staging table, then one upsert, in one transaction.
Timestamps without a timezone (a naive Parquet timestamp, a CSV or Parquet string without an offset) are UTC.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from array import array
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import psycopg

from queue_app import gateway
from queue_app.errors import BadRows, Rejected

SAMPLE_SYMBOLS = ("AAPL", "MSFT", "IBM", "GOOG")
TIME_COLUMNS = ("ts", "timestamp", "datetime", "date", "time")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
FORMATS = ("csv", "parquet")
PARQUET_BATCH = 65_536  # rows a Parquet record batch holds: memory stays bounded whatever the file's size
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Bar(NamedTuple):
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


class RowChecks:
    """The row checks of every import format, in one place: a bar's values (`_check`), then duplicate
    timestamps across the file. `unit` names a position ("line" for CSV, "row" for Parquet).

    Each good bar's instant is kept as 16 bytes (microseconds since the epoch and its position), not as
    objects, so a 10-million-row file costs 160 MB here; they are sorted for duplicates only when the
    file's timestamps are not strictly increasing."""

    def __init__(self, unit: str):
        self.unit = unit
        self.problems: list[tuple[int, str]] = []
        self._micros = array("q")
        self._where = array("q")
        self._last: int | None = None
        self._ordered = True

    def bad(self, where: int, problem: str) -> None:
        self.problems.append((where, problem))

    def check(self, where: int, bar: Bar, micros: int | None = None) -> bool:
        """True when the bar is good (so far: a later duplicate is reported by `finish`)."""
        if (problem := _check(bar)) is not None:
            self.bad(where, problem)
            return False
        if micros is None:
            micros = (bar.ts - _EPOCH) // _MICROSECOND
        if self._last is not None and micros <= self._last:
            self._ordered = False
        self._last = micros
        self._micros.append(micros)
        self._where.append(where)
        return True

    def finish(self) -> None:
        """Raise BadRows listing every problem in file order, duplicates included; None when all is well."""
        if not self._ordered:
            self._duplicates()
        if self.problems:
            self.problems.sort(key=lambda problem: problem[0])
            raise BadRows([f"{self.unit} {where}: {problem}" for where, problem in self.problems])

    def _duplicates(self) -> None:
        import numpy as np

        micros = np.frombuffer(self._micros, dtype=np.int64)
        where = np.frombuffer(self._where, dtype=np.int64)
        order = np.argsort(micros, kind="stable")  # stable: within a run of equal instants, file order
        ordered = micros[order]
        starts = np.r_[True, ordered[1:] != ordered[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(ordered)), 0))
        for i in np.flatnonzero(~starts):
            instant = (_EPOCH + int(ordered[i]) * _MICROSECOND).isoformat()
            self.bad(
                int(where[order[i]]),
                f"duplicate timestamp {instant} (also {self.unit} {int(where[order[first[i]]])})",
            )


def _csv_bars(lines: Iterable[str], checks: RowChecks) -> Iterator[Bar]:
    """The good bars of a CSV file, in order, until its first bad row; `checks` collects every problem."""
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    time_column = next((name for name in TIME_COLUMNS if name in header), None)
    missing = [name for name in PRICE_COLUMNS if name not in header]
    if time_column is None or missing:
        wanted = ", ".join(missing + ([] if time_column else ["ts (or date)"]))
        raise BadRows([f"line 1: header {','.join(header) or '(empty)'} lacks column(s): {wanted}"])
    positions = [header.index(name) for name in (time_column, *PRICE_COLUMNS)]
    for row in reader:
        line = reader.line_num  # the physical line (a quoted field may span several)
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            ts, *numbers = (row[i] for i in positions)
            bar = Bar(_timestamp(ts), *(float(n) for n in numbers))
        except (IndexError, ValueError) as exc:
            checks.bad(line, "too few columns" if isinstance(exc, IndexError) else str(exc))
            continue
        if checks.check(line, bar) and not checks.problems:
            yield bar


def parse_csv(lines: Iterable[str]) -> list[Bar]:
    """Parse and check every row; raise BadRows listing each bad line (header is line 1)."""
    checks = RowChecks("line")
    bars = list(_csv_bars(lines, checks))
    checks.finish()
    return bars


def _parquet_bars(path: Path, checks: RowChecks, batch_size: int = PARQUET_BATCH) -> Iterator[Bar]:
    """The good bars of a Parquet file, read a record batch at a time, until its first bad row.

    Columns as for CSV (names case-insensitive): the time a timestamp (naive: UTC; nanoseconds are cut to
    microseconds, PostgreSQL's precision), a date (midnight UTC) or an ISO 8601 string; prices and volume
    numbers of any width. A null is a bad row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # buffer_size: column chunks are read 1 MiB at a time rather than a whole row group at once (a 1M-row
    # row group, pyarrow's default, held about 100 MB of Arrow memory; streamed, about 20 MB).
    parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    schema = parquet.schema_arrow
    names = {name.strip().lower(): name for name in schema.names}
    time_column = next((names[name] for name in TIME_COLUMNS if name in names), None)
    missing = [name for name in PRICE_COLUMNS if name not in names]
    if time_column is None or missing:
        wanted = ", ".join(missing + ([] if time_column else ["ts (or date)"]))
        raise BadRows([f"columns {','.join(schema.names) or '(none)'} lack column(s): {wanted}"])
    columns = [time_column, *(names[name] for name in PRICE_COLUMNS)]
    time_type = schema.field(time_column).type
    textual = pa.types.is_string(time_type) or pa.types.is_large_string(time_type)
    if not (textual or pa.types.is_timestamp(time_type) or pa.types.is_date(time_type)):
        raise BadRows([f"column {time_column} is {time_type}, not a timestamp, date or string"])
    for name in columns[1:]:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            raise BadRows([f"column {name} is {kind}, not a number"])
    utc = pa.timestamp("us", tz="UTC")
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        times = batch.column(0)
        if textual:
            instants, micros = times.to_pylist(), [None] * len(batch)
        else:  # a naive timestamp's value is already UTC: the cast labels it so
            times = pc.cast(times, pa.timestamp("us")) if pa.types.is_date(time_type) else times
            times = pc.cast(times, utc, safe=False)
            instants, micros = times.to_pylist(), pc.cast(times, pa.int64()).to_pylist()
        values = [pc.cast(batch.column(i), pa.float64()).to_pylist() for i in range(1, 6)]
        for ts, us, *numbers in zip(instants, micros, *values, strict=True):
            row += 1
            if ts is None or None in numbers:
                empty = [name for name, value in zip(columns, (ts, *numbers), strict=True) if value is None]
                checks.bad(row, f"no value in column(s) {', '.join(empty)}")
                continue
            if textual:
                try:
                    ts = _timestamp(ts)
                except ValueError as exc:
                    checks.bad(row, str(exc))
                    continue
            bar = Bar(ts, *numbers)
            if checks.check(row, bar, us) and not checks.problems:
                yield bar


def load(conn: psycopg.Connection, symbol: str, timeframe: str, bars: Iterable[Bar]) -> tuple[int, int]:
    """Upsert bars with COPY in one transaction; returns (inserted, updated)."""
    return gateway.upsert_bars(conn, symbol, timeframe, bars)


def _checked(bars: Iterator[Bar], checks: RowChecks) -> Iterator[Bar]:
    """The bars, then BadRows (so the COPY under way, and its transaction, are abandoned) if any was bad."""
    yield from bars
    checks.finish()


def file_format(path: Path, given: str | None = None) -> str:
    """`given`, else parquet for a name ending .parquet or .pq, else csv."""
    if given is not None:
        return given
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def import_file(
    conn: psycopg.Connection,
    path: Path,
    symbol: str,
    timeframe: str,
    format: str | None = None,
    batch_size: int = PARQUET_BATCH,
) -> tuple[int, int]:
    """A CSV file (gzip-compressed when it ends in .gz) or a Parquet file (`file_format`), streamed through
    the row checks into COPY and upserted, all or nothing; errors name the file."""
    kind = file_format(path, format)
    try:
        if kind == "parquet":
            import pyarrow

            checks = RowChecks("row")
            try:
                return load(
                    conn, symbol.upper(), timeframe, _checked(_parquet_bars(path, checks, batch_size), checks)
                )
            except OSError:
                raise
            except pyarrow.ArrowException as exc:
                raise BadRows([f"cannot read the file as Parquet: {exc}"], str(path)) from None
        opener = gzip.open if path.suffix == ".gz" else open
        checks = RowChecks("line")
        try:
            # utf-8-sig: spreadsheets write a byte order mark that would hide the first column's name.
            with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
                return load(conn, symbol.upper(), timeframe, _checked(_csv_bars(handle, checks), checks))
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            kind = "gzip-compressed UTF-8 CSV" if opener is gzip.open else "UTF-8 CSV"
            raise BadRows([f"cannot read the file as {kind} text: {exc}"], str(path)) from None
    except FileNotFoundError:
        raise Rejected(f"no such file: {path}") from None
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None
    except BadRows as bad:
        raise BadRows(bad.problems, str(path)) from None


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
