"""`sfq db | api | status | bars | migrate-duckdb | demo`: running sfq, its data and its database."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from queue_app import artifact_store, bars, db, embedded, gateway, legacy, monitor, vocabulary
from queue_app.cli.common import connect, model_id
from queue_app.config import database_url
from queue_app.errors import Conflict


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    applied = db.upgrade(database_url(args.settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")


def cmd_db_roles(args: argparse.Namespace) -> None:
    db.apply_roles(database_url(args.settings))
    print("roles sfq_submitter, sfq_worker, sfq_api: privileges granted (run again after `sfq db upgrade`)")


def cmd_db_stop(args: argparse.Namespace) -> None:
    if args.settings.postgres_url:
        raise Conflict("POSTGRES_URL is set: sfq does not manage that server")
    print("stopped sfq's private PostgreSQL" if embedded.stop(args.settings.home) else "it was not running")


def cmd_db_url(args: argparse.Namespace) -> None:
    print(database_url(args.settings))


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    # The web process (queue_app.web: the API and the dashboard), named rather than imported: the CLI does not
    # import the other front ends. httptools and uvloop (uvicorn[standard]) rather than h11 and asyncio's
    # loop: about 30% less CPU per request; the protocol bounds request heads (queue_app.api.http). The
    # startup lines stay at info ("Uvicorn running on ..."); the access log, a line per request, only with
    # --access-log. No WebSocket: the API serves none.
    uvicorn.run(
        "queue_app.web:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        http="queue_app.api.http:HttpProtocol",
        loop="uvloop",
        ws="none",
        log_level="info",
        access_log=args.access_log,
    )


def cmd_status(args: argparse.Namespace) -> None:
    with connect(args) as conn:
        print(monitor.status_text(conn, args.settings.rescue_after_s))


def cmd_bars_import(args: argparse.Namespace) -> None:
    with connect(args) as conn:
        inserted, updated = bars.import_file(conn, Path(args.file), args.symbol, args.timeframe, args.format)
        if args.calendar:
            gateway.run(conn, gateway.set_calendar(args.symbol.upper(), args.calendar))
    calendar = f"; calendar {args.calendar}" if args.calendar else ""
    print(f"{args.symbol.upper()} {args.timeframe}: {inserted} bars inserted, {updated} updated{calendar}")


def cmd_bars_sample(args: argparse.Namespace) -> None:
    with connect(args) as conn:
        for symbol, rows in bars.sample_bars():
            inserted, updated = bars.load(conn, symbol, "1d", rows)
            span = f"{rows[0].ts:%Y-%m-%d}..{rows[-1].ts:%Y-%m-%d}"
            print(f"{symbol} 1d: {inserted} bars inserted, {updated} updated ({span})")


def cmd_bars_list(args: argparse.Namespace) -> None:
    with connect(args) as conn:
        for row in gateway.run(conn, gateway.symbols()):
            print(
                f"{row['symbol']:<8} {row['timeframe']:<4} {row['bars']:>7} bars  "
                f"{row['first']:%Y-%m-%d} .. {row['last']:%Y-%m-%d}"
            )


def cmd_migrate_duckdb(args: argparse.Namespace) -> None:
    print(legacy.migrate(database_url(args.settings), Path(args.path), args.dry_run).render())


def cmd_demo(args: argparse.Namespace) -> None:
    from queue_app.cli import demo, demo_live

    (demo_live if args.live else demo).run(args.settings, workers=args.workers)


def _db(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("db", help="database: upgrade, roles, url, stop (the private cluster)")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, func, what in (
        ("upgrade", cmd_db_upgrade, "create or upgrade the schema (no-op when current)"),
        (
            "roles",
            cmd_db_roles,
            "create or update the roles sfq_submitter, sfq_worker, sfq_api (docs/security.md)",
        ),
        ("url", cmd_db_url, "print the database URL in use"),
        ("stop", cmd_db_stop, "stop sfq's private PostgreSQL cluster"),
    ):
        actions.add_parser(name, help=what).set_defaults(func=func)


def _bars(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bars", help="price bars: import, sample, list")
    actions = parser.add_subparsers(dest="bars_command", required=True, metavar="ACTION")
    imported = actions.add_parser("import", help="import OHLCV bars from a CSV or Parquet file")
    imported.add_argument("file")
    imported.add_argument(
        "--format",
        choices=bars.FORMATS,
        help="the file's format (default: parquet for a name ending .parquet or .pq, else csv)",
    )
    imported.add_argument("--symbol", required=True)
    imported.add_argument("--timeframe", default="1d")
    imported.add_argument(
        "--calendar",
        choices=vocabulary.CALENDARS,
        help="the symbol's trading calendar, for annualising its backtests (none set: equity)",
    )
    imported.set_defaults(func=cmd_bars_import)
    actions.add_parser("sample", help="load real daily bars of AAPL, MSFT, IBM, GOOG (offline)").set_defaults(
        func=cmd_bars_sample
    )
    actions.add_parser("list", help="symbols and their bar counts").set_defaults(func=cmd_bars_list)


def cmd_artifacts_evict(args: argparse.Namespace) -> None:
    with connect(args) as conn:
        evicted, collected = artifact_store.evict(
            conn, args.older_than, args.keep_top, args.metric, args.order == "desc", args.model, args.dry_run
        )
    verb = "would evict" if args.dry_run else "evicted"
    for row in evicted:
        print(f"model {row['model_id']}: {verb} its file ({row['size']} bytes, sha256 {row['sha256']})")
    freed = sum(blob["size"] for blob in collected)
    print(
        f"{len(evicted)} file(s) {verb}; {len(collected)} unlinked stored file(s) removed, {freed} bytes"
        + (" (dry run: nothing changed)" if args.dry_run else "")
    )


def _artifacts(sub: argparse._SubParsersAction) -> None:
    artifacts = sub.add_parser("artifacts", help="model files: the retention policy")
    commands = artifacts.add_subparsers(dest="artifacts_command", required=True, metavar="COMMAND")
    evict = commands.add_parser(
        "evict",
        help="evict the files of models that are not aliased, not in their symbol's top K by a metric and "
        "older than N days (rebuilt by retraining when a forecast needs them)",
    )
    evict.add_argument("--older-than", type=int, required=True, metavar="DAYS", help="trained this long ago")
    evict.add_argument("--keep-top", type=int, required=True, metavar="K", help="keep each symbol's top K")
    evict.add_argument(
        "--metric", default="ic", choices=vocabulary.SORTABLE_METRICS, help="the leaderboard's (default ic)"
    )
    evict.add_argument("--order", default="desc", choices=("desc", "asc"), help="best first: desc (default)")
    evict.add_argument(
        "--model", type=model_id, action="append", help="only these models (repeatable); aliased: refused"
    )
    evict.add_argument("--dry-run", action="store_true", help="list what would be evicted; change nothing")
    evict.set_defaults(func=cmd_artifacts_evict)


def register(sub: argparse._SubParsersAction) -> None:
    _db(sub)
    _artifacts(sub)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--access-log", action="store_true", help="log a line per request (method, path, status); default off"
    )
    api.set_defaults(func=cmd_api)

    sub.add_parser("status", help="workers, queue depth, throughput and recent failures").set_defaults(
        func=cmd_status
    )
    _bars(sub)

    migrate = sub.add_parser("migrate-duckdb", help="import the old service's DuckDB database")
    migrate.add_argument("path")
    migrate.add_argument("--dry-run", action="store_true", help="do everything, report, then roll back")
    migrate.set_defaults(func=cmd_migrate_duckdb)

    demo = sub.add_parser("demo", help="the end-to-end demo: real bars, real workers, results")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    demo.add_argument(
        "--live",
        action="store_true",
        help="the live demo: a promoted strategy forecasting on its own as new bars arrive",
    )
    demo.set_defaults(func=cmd_demo)
