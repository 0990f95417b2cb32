"""Bars in: CSV parsing and checking, `sfq bars import` (all or nothing, upsert) and the sample data.

The CLI runs as a real subprocess against the run's database; nothing is mocked.
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest

from queue_app import bars, db
from queue_app.errors import BadRows
from tests.conftest import run_sfq

HEADER = "date,open,high,low,close,volume\n"


def bar_rows(conn: psycopg.Connection, symbol: str) -> list[tuple]:
    return conn.execute(
        "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = %s ORDER BY ts", (symbol,)
    ).fetchall()


# A file whose bad rows are all reported, each with its line number (the header is line 1).
# Line 7 is blank: it is skipped, but still counts as a line.
BAD_FILE = (
    HEADER  # line 1
    + "2020-01-02,10,11,9,10.5,100\n"  # line 2: good
    + "2020-01-03,abc,11,9,10.5,100\n"  # line 3: non-numeric price
    + "2020-01-06,10,10.2,9,10.5,100\n"  # line 4: high below close
    + "2020-01-07,10,11,9,10.5,-5\n"  # line 5: negative volume
    + "2020-01-08,10,11,9,10.5,100\n"  # line 6: good
    + "\n"  # line 7: blank
    + "2020-01-09,0,11,9,10.5,100\n"  # line 8: zero price
    + "2020-01-02T00:00:00+00:00,10,11,9,10.5,100\n"  # line 9: same instant as line 2
    + "not-a-date,10,11,9,10.5,100\n"  # line 10: unparsable date
    + "2020-01-13,10,11\n"  # line 11: too few columns
    + "2020-01-14,10,11,9,10.5,100\n"  # line 12: good
)
BAD_LINES = {
    3: "abc",
    4: "bracket",
    5: "volume",
    8: "positive",
    9: "duplicate timestamp",
    10: "not-a-date",
    11: "too few columns",
}


def test_parse_csv_accepts_a_good_file_in_order():
    by_date = bars.parse_csv(
        io.StringIO(
            " Date , Open,High,LOW,close,Volume\n"
            "2020-01-02,10,11,9,10.5,100\n"
            "\n"
            "2020-01-03,10.5,12.25,10,12,0\n"
            "2020-01-06,12,12.5,11.5,11.75,2500.5\n"
        )
    )
    assert [b.ts for b in by_date] == [
        datetime(2020, 1, 2, tzinfo=UTC),
        datetime(2020, 1, 3, tzinfo=UTC),
        datetime(2020, 1, 6, tzinfo=UTC),
    ]
    assert (by_date[1].open, by_date[1].high, by_date[1].low, by_date[1].close, by_date[1].volume) == (
        10.5,
        12.25,
        10.0,
        12.0,
        0.0,
    )
    assert by_date[2].volume == 2500.5

    by_ts = bars.parse_csv(
        [
            "ts,open,high,low,close,volume\n",
            "2020-01-02T15:30:00,1,2,0.5,1.5,10\n",  # no timezone: taken as UTC
            "2020-01-02 16:30:00+02:00,1,2,0.5,1.5,10\n",  # explicit offset: kept
            "2020-01-02T17:30:00Z,1,2,0.5,1.5,10\n",
            "2020-01-03T09:00:00.250000-05:00,1,2,0.5,1.5,10\n",
        ]
    )
    assert [b.ts for b in by_ts] == [
        datetime(2020, 1, 2, 15, 30, tzinfo=UTC),
        datetime(2020, 1, 2, 16, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2020, 1, 2, 17, 30, tzinfo=UTC),
        datetime(2020, 1, 3, 9, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-5))),
    ]
    assert all(b.ts.tzinfo is not None for b in by_ts)
    assert by_ts[1].ts.astimezone(UTC) == datetime(2020, 1, 2, 14, 30, tzinfo=UTC)


def test_parse_csv_reports_every_bad_row_with_its_line_number():
    with pytest.raises(BadRows) as raised:
        bars.parse_csv(io.StringIO(BAD_FILE))
    problems = raised.value.problems
    assert [int(p.split(":")[0].removeprefix("line ")) for p in problems] == sorted(BAD_LINES)
    for problem, (line, keyword) in zip(problems, sorted(BAD_LINES.items()), strict=True):
        assert problem.startswith(f"line {line}: "), problem
        assert keyword in problem, (line, problem)
    assert "also line 2" in problems[sorted(BAD_LINES).index(9)]
    message = str(raised.value)
    assert message.startswith(f"{len(BAD_LINES)} bad row(s), nothing imported")
    for line in BAD_LINES:
        assert f"line {line}:" in message
    for good in (2, 6, 7, 12):
        assert f"line {good}:" not in message


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("date,open,close\n", ["high", "low", "volume"]),
        ("day,open,high,low,close,volume\n", ["ts"]),
        ("", ["open", "high", "low", "close", "volume", "ts"]),  # an empty file
    ],
)
def test_parse_csv_names_missing_columns(header, missing):
    with pytest.raises(BadRows) as raised:
        bars.parse_csv(io.StringIO(header + ("2020-01-02,10,11,9,10.5,100\n" if header else "")))
    [problem] = raised.value.problems
    assert problem.startswith("line 1: ")
    named = problem.split("lacks column(s):")[1]
    for column in missing:
        assert column in named, problem
    for present in {"open", "high", "low", "close", "volume"} - set(missing):
        assert present not in named, problem


def test_cli_import_of_a_bad_file_imports_nothing(tmp_path, database, conn):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_FILE)
    result = run_sfq("bars", "import", str(path), "--symbol", "TST1", url=database)
    assert result.returncode == 1, result
    assert result.stderr.startswith("sfq:"), result.stderr
    assert "Traceback" not in result.stderr
    for line, keyword in BAD_LINES.items():
        assert f"line {line}:" in result.stderr
        assert keyword in result.stderr
    assert result.stdout == ""
    assert bar_rows(conn, "TST1") == []


def test_cli_import_inserts_then_upserts(tmp_path, database, conn):
    path = tmp_path / "good.csv"
    rows = [
        "2021-03-01,10,11,9,10.5,100",
        "2021-03-02,10.5,12,10,11.5,200",
        "2021-03-03,11.5,12,11,11.25,300",
    ]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    first = run_sfq("bars", "import", str(path), "--symbol", "tst2", url=database)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "TST2 1d: 3 bars inserted, 0 updated"
    stored = bar_rows(conn, "TST2")
    assert [r[4] for r in stored] == [10.5, 11.5, 11.25]
    assert stored[0][0] == datetime(2021, 3, 1, tzinfo=UTC)

    rows[1] = "2021-03-02,10.5,12,10,11.75,200"  # one close changed
    path.write_text(HEADER + "\n".join(rows) + "\n")
    second = run_sfq("bars", "import", str(path), "--symbol", "TST2", url=database)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "TST2 1d: 0 bars inserted, 3 updated"
    stored = bar_rows(conn, "TST2")
    assert len(stored) == 3
    assert [r[4] for r in stored] == [10.5, 11.75, 11.25]


def test_cli_import_gzip_timeframe_and_calendar(tmp_path, database, conn):
    path = tmp_path / "bars.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("ts,open,high,low,close,volume\n2021-03-01T14:30:00Z,10,11,9,10.5,100\n")
    result = run_sfq(
        "bars",
        "import",
        str(path),
        "--symbol",
        "TST3",
        "--timeframe",
        "1h",
        "--calendar",
        "24x7",
        url=database,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TST3 1h: 1 bars inserted, 0 updated; calendar 24x7"
    assert conn.execute("SELECT calendar FROM symbol_calendars WHERE symbol = 'TST3'").fetchone() == ("24x7",)
    refused = run_sfq("bars", "import", str(path), "--symbol", "TST3", "--calendar", "lunar", url=database)
    assert refused.returncode == 2 and "invalid choice: 'lunar'" in refused.stderr
    assert conn.execute("SELECT timeframe, ts FROM bars WHERE symbol = 'TST3'").fetchall() == [
        ("1h", datetime(2021, 3, 1, 14, 30, tzinfo=UTC))
    ]


def test_cli_import_of_a_file_with_a_byte_order_mark(tmp_path, database, conn):
    # Spreadsheets save "CSV UTF-8" with a BOM; it must not hide the first column's name.
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + HEADER + "2021-03-01,10,11,9,10.5,100\n").encode("utf-8"))
    result = run_sfq("bars", "import", str(path), "--symbol", "TST4", url=database)
    assert result.returncode == 0, result.stderr
    assert "1 bars inserted" in result.stdout
    assert len(bar_rows(conn, "TST4")) == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("binary.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00"),
        ("latin1.csv", (HEADER + "2021-03-01,10,11,9,10.5,100 # caf\xe9\n").encode("latin-1")),
        ("not-gzip.csv.gz", HEADER.encode()),
        ("truncated.csv.gz", gzip.compress((HEADER + "2021-03-01,10,11,9,10.5,100\n" * 50).encode())[:-12]),
    ],
    ids=["binary", "latin-1", "not-gzip", "truncated-gzip"],
)
def test_cli_import_of_an_unreadable_file_is_a_clean_error(tmp_path, database, conn, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = run_sfq("bars", "import", str(path), "--symbol", "TST5", url=database)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"sfq: {path}: "), result.stderr
    assert "cannot read the file as" in result.stderr
    assert "Traceback" not in result.stderr
    assert bar_rows(conn, "TST5") == []


def test_cli_import_of_a_missing_file(tmp_path, database):
    result = run_sfq("bars", "import", str(tmp_path / "nope.csv"), "--symbol", "TST6", url=database)
    assert result.returncode == 1
    assert result.stderr.strip() == f"sfq: no such file: {tmp_path / 'nope.csv'}"


def test_cli_import_of_a_directory_is_a_clean_error(tmp_path, database):
    result = run_sfq("bars", "import", str(tmp_path), "--symbol", "TST7", url=database)
    assert result.returncode == 1
    assert result.stderr.startswith("sfq:"), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bars_sample_loads_the_four_symbols(make_database):
    url = make_database()
    db.upgrade(url)
    result = run_sfq("bars", "sample", url=url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["AAPL", "MSFT", "IBM", "GOOG"]
    assert lines[0].startswith("AAPL 1d: 3270 bars inserted, 0 updated (2000-03-01..2013-03-01)")
    assert lines[3].startswith("GOOG 1d: 2148 bars inserted, 0 updated")
    with psycopg.connect(url) as conn:
        counts = dict(conn.execute("SELECT symbol, count(*) FROM bars GROUP BY symbol").fetchall())
    assert counts == {"AAPL": 3270, "MSFT": 3270, "IBM": 3270, "GOOG": 2148}
    again = run_sfq("bars", "sample", url=url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("AAPL 1d: 0 bars inserted, 3270 updated")


def test_sample_bars_counts_and_price_sanity(conn):
    counts = dict(
        conn.execute(
            "SELECT symbol, count(*) FROM bars WHERE timeframe = '1d' AND symbol = ANY(%s) GROUP BY symbol",
            (list(bars.SAMPLE_SYMBOLS),),
        ).fetchall()
    )
    assert counts == {"AAPL": 3270, "MSFT": 3270, "IBM": 3270, "GOOG": 2148}
    bad = conn.execute(
        "SELECT symbol, ts, open, high, low, close FROM bars WHERE symbol = ANY(%s)"
        " AND NOT (high >= greatest(open, close) AND low <= least(open, close) AND low > 0 AND volume >= 0)",
        (list(bars.SAMPLE_SYMBOLS),),
    ).fetchall()
    assert bad == []


def _big_drops(conn: psycopg.Connection, threshold: float) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT symbol, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), change FROM ("
        "  SELECT symbol, ts, close / lag(close) OVER (PARTITION BY symbol ORDER BY ts) - 1 AS change"
        "  FROM bars WHERE timeframe = '1d' AND symbol = ANY(%s)) AS changes"
        " WHERE change < %s",
        (list(bars.SAMPLE_SYMBOLS), threshold),
    ).fetchall()
    return {(symbol, day) for symbol, day, _ in rows}


def test_sample_bars_are_split_adjusted(conn):
    # The source's unadjusted closes show AAPL's 2:1 splits (2000-06-21, 2005-02-28) and MSFT's
    # (2003-02-18) as drops of 45-50%; the one real crash is AAPL's -52% of 2000-09-29.
    import bokeh_sampledata

    raw = gzip.decompress(Path(bokeh_sampledata.package_path("stocks.csv.gz")).read_bytes()).decode()
    closes: dict[str, list[tuple[str, float]]] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        closes.setdefault(row["Ticker"], []).append((row["Date"], float(row["Close"])))
    raw_drops = {
        (symbol, day)
        for symbol in bars.SAMPLE_SYMBOLS
        for (_, before), (day, after) in pairwise(closes[symbol])
        if after / before - 1 < -0.4
    }
    assert {("AAPL", "2000-06-21"), ("AAPL", "2005-02-28"), ("MSFT", "2003-02-18")} <= raw_drops

    assert _big_drops(conn, -0.6) == set()
    assert _big_drops(conn, -0.4) == {("AAPL", "2000-09-29")}
    aapl = dict(
        conn.execute(
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), close FROM bars"
            " WHERE symbol = 'AAPL' AND timeframe = '1d'"
        ).fetchall()
    )
    assert abs(aapl["2005-02-28"] / aapl["2005-02-25"] - 1) < 0.1
    assert abs(aapl["2000-06-21"] / aapl["2000-06-20"] - 1) < 0.15


# Parquet: the same columns, the same checks (RowChecks), the same COPY and upsert; rows are numbered from 1.


def write_parquet(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


GOOD_ROWS = [
    ("2021-03-01T14:30:00", 10.0, 11.0, 9.0, 10.5, 100.0),
    ("2021-03-01T14:31:00+00:00", 10.5, 12.0, 10.0, 11.5, 200.0),
    ("2021-03-01T15:32:00+01:00", 11.5, 12.0, 11.0, 11.25, 0.0),  # 14:32 UTC
]


def _columns(rows, typed_ts: bool) -> dict:
    ts = [row[0] for row in rows]
    if typed_ts:  # naive timestamps are UTC, as in CSV
        ts = [bars._timestamp(text).astimezone(UTC).replace(tzinfo=None) for text in ts]
    names = ("open", "high", "low", "close", "volume")
    return {"ts": ts, **{name: [row[i + 1] for row in rows] for i, name in enumerate(names)}}


@pytest.mark.parametrize("typed_ts", [True, False], ids=["timestamp", "string"])
def test_parquet_import_matches_the_same_csv(tmp_path, database, conn, typed_ts):
    csv_path = tmp_path / "bars.csv"
    csv_path.write_text(
        "ts,open,high,low,close,volume\n" + "".join(",".join(map(str, r)) + "\n" for r in GOOD_ROWS)
    )
    parquet = write_parquet(tmp_path / "bars.parquet", _columns(GOOD_ROWS, typed_ts))
    symbol = f"PQ{int(typed_ts)}"
    from_csv = run_sfq(
        "bars", "import", str(csv_path), "--symbol", f"{symbol}C", "--timeframe", "1m", url=database
    )
    assert from_csv.returncode == 0, from_csv.stderr
    from_parquet = run_sfq(
        "bars", "import", str(parquet), "--symbol", symbol, "--timeframe", "1m", url=database
    )
    assert from_parquet.returncode == 0, from_parquet.stderr
    assert from_parquet.stdout.strip() == f"{symbol} 1m: 3 bars inserted, 0 updated"
    assert bar_rows(conn, symbol) == bar_rows(conn, f"{symbol}C")
    assert bar_rows(conn, symbol)[2][0] == datetime(2021, 3, 1, 14, 32, tzinfo=UTC)
    # By --format, whatever the name; a second import updates.
    renamed = parquet.rename(tmp_path / "bars.data")
    again = run_sfq(
        "bars",
        "import",
        str(renamed),
        "--symbol",
        symbol,
        "--timeframe",
        "1m",
        "--format",
        "parquet",
        url=database,
    )
    assert again.returncode == 0, again.stderr
    assert "0 bars inserted, 3 updated" in again.stdout


def test_parquet_import_reports_every_bad_row_and_imports_nothing(tmp_path, database, conn):
    rows = [
        ("2021-03-01T14:30:00", 10.0, 11.0, 9.0, 10.5, 100.0),  # row 1: good
        ("2021-03-01T14:31:00", 10.0, 8.0, 9.0, 10.5, 100.0),  # row 2: high below low
        ("2021-03-01T14:32:00", 10.0, 11.0, 9.0, 10.5, -1.0),  # row 3: negative volume
        ("2021-03-01T14:33:00", 10.0, 11.0, 9.0, 10.5, 100.0),  # row 4: good
        ("2021-03-01T14:30:00", 10.0, 11.0, 9.0, 10.5, 100.0),  # row 5: same instant as row 1
        ("2021-03-01T14:35:00", 10.0, 11.0, 9.0, 10.5, 100.0),  # row 6: good
    ]
    columns = _columns(rows, typed_ts=True)
    columns["close"][5] = None  # row 6: an empty close after all
    path = write_parquet(tmp_path / "bad.parquet", columns, row_group_size=2)
    result = run_sfq("bars", "import", str(path), "--symbol", "PQBAD", url=database)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"sfq: {path}: 4 bad row(s), nothing imported"), result.stderr
    assert "Traceback" not in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert [line.split(":")[0] for line in lines] == ["row 2", "row 3", "row 5", "row 6"]
    assert "bracket" in lines[0] and "volume" in lines[1]
    assert "duplicate timestamp 2021-03-01T14:30:00+00:00 (also row 1)" in lines[2]
    assert "close" in lines[3]
    assert bar_rows(conn, "PQBAD") == []


@pytest.mark.parametrize(
    ("drop", "change", "named"),
    [
        ("high", None, "lack column(s): high"),
        ("ts", None, "lack column(s): ts (or date)"),
        (None, ("volume", ["a", "b"]), "column volume is string, not a number"),
        (None, ("ts", [1.5, 2.5]), "column ts is double, not a timestamp"),
    ],
    ids=["no-high", "no-ts", "text-volume", "float-ts"],
)
def test_parquet_import_names_a_missing_or_mistyped_column(tmp_path, database, conn, drop, change, named):
    columns = _columns(GOOD_ROWS[:2], typed_ts=True)
    if drop:
        del columns[drop]
    if change:
        columns[change[0]] = change[1]
    path = write_parquet(tmp_path / "columns.parquet", columns)
    result = run_sfq("bars", "import", str(path), "--symbol", "PQCOL", url=database)
    assert result.returncode == 1, result
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert bar_rows(conn, "PQCOL") == []


def test_parquet_read_in_several_batches(tmp_path, database, conn):
    # 1,000 minute bars read 64 rows at a time (16 batches), across 7 row groups; a duplicate in the last
    # batch of the one before it is still found, and rows are numbered across batches.
    start = datetime(2022, 1, 3, 14, 30)
    n = 1000
    columns = {
        "Timestamp": [start + timedelta(minutes=i) for i in range(n)],
        "Open": [100.0 + i % 7 for i in range(n)],
        "High": [110.0 + i % 7 for i in range(n)],
        "Low": [90.0 + i % 7 for i in range(n)],
        "Close": [101.0 + i % 7 for i in range(n)],
        "Volume": list(range(n)),  # integers: cast to double
    }
    path = write_parquet(tmp_path / "minutes.parquet", columns, row_group_size=150)
    inserted, updated = bars.import_file(conn, path, "pqmany", "1m", batch_size=64)
    assert (inserted, updated) == (n, 0)
    stored = bar_rows(conn, "PQMANY")
    assert len(stored) == n
    assert stored[0] == (datetime(2022, 1, 3, 14, 30, tzinfo=UTC), 100.0, 110.0, 90.0, 101.0, 0.0)
    assert stored[-1][0] == datetime(2022, 1, 3, 14, 30, tzinfo=UTC) + timedelta(minutes=n - 1)

    columns["Timestamp"][900] = columns["Timestamp"][63]
    columns["High"][700] = 1.0
    path = write_parquet(tmp_path / "minutes.parquet", columns, row_group_size=150)
    with pytest.raises(BadRows) as raised:
        bars.import_file(conn, path, "pqmany", "1m", batch_size=64)
    assert [p.split(":")[0] for p in raised.value.problems] == ["row 701", "row 901"]
    assert raised.value.problems[1].endswith("(also row 64)")
    assert bar_rows(conn, "PQMANY") == stored  # nothing changed


def test_parquet_import_keeps_the_bars_triggers(tmp_path, database, conn):
    # The upsert (counted in SQL) still fires the statement triggers: a changed value is a revision, an
    # append after the latest bar is not.
    revision = "SELECT revision FROM bar_revisions WHERE symbol = 'PQREV' AND timeframe = '1d'"
    path = write_parquet(tmp_path / "rev.parquet", _columns(GOOD_ROWS[:2], typed_ts=True))
    assert bars.import_file(conn, path, "PQREV", "1d") == (2, 0)
    path = write_parquet(tmp_path / "rev.parquet", _columns(GOOD_ROWS, typed_ts=True))
    assert bars.import_file(conn, path, "PQREV", "1d") == (1, 2)  # identical two, one appended
    assert conn.execute(revision).fetchone() is None
    changed = _columns(GOOD_ROWS, typed_ts=True)
    changed["close"][0] = 10.75
    assert bars.import_file(conn, write_parquet(tmp_path / "rev.parquet", changed), "PQREV", "1d") == (0, 3)
    assert conn.execute(revision).fetchone() == (1,)


def test_cli_import_of_a_file_that_is_not_parquet(tmp_path, database, conn):
    path = tmp_path / "fake.parquet"
    path.write_text(HEADER + "2021-03-01,10,11,9,10.5,100\n")
    result = run_sfq("bars", "import", str(path), "--symbol", "PQNOT", url=database)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"sfq: {path}: 1 bad row(s), nothing imported"), result.stderr
    assert "cannot read the file as Parquet" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_sfq("bars", "import", str(tmp_path / "nope.parquet"), "--symbol", "PQNOT", url=database)
    assert missing.stderr.strip() == f"sfq: no such file: {tmp_path / 'nope.parquet'}"
    assert bar_rows(conn, "PQNOT") == []
