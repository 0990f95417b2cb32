"""`sfq`: the command line. Errors are one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from queue_app import bars, db, embedded, lineage, monitor, progress, spec, sweeps
from queue_app.config import Settings, database_url
from queue_app.enqueue import Conflict, NotFound, RequestRejected, request_params, run

TERMINAL = ("completed", "failed", "cancelled")


class CommandError(Exception):
    """A user-facing failure: printed as `sfq: <message>`, exit status 1."""


def _connect(args) -> psycopg.Connection:
    return db.connect(database_url(args.settings), autocommit=True)


def cmd_db_upgrade(args) -> None:
    applied = db.upgrade(database_url(args.settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")


def cmd_db_roles(args) -> None:
    db.apply_roles(database_url(args.settings))
    print("roles sfq_submitter, sfq_worker, sfq_api: privileges granted (run again after `sfq db upgrade`)")


def cmd_db_stop(args) -> None:
    if args.settings.postgres_url:
        raise CommandError("POSTGRES_URL is set: sfq does not manage that server")
    print("stopped sfq's private PostgreSQL" if embedded.stop(args.settings.home) else "it was not running")


def cmd_db_url(args) -> None:
    print(database_url(args.settings))


def cmd_api(args) -> None:
    import uvicorn

    from queue_app.api import HttpProtocol, create_app

    # httptools and uvloop (uvicorn[standard]) rather than h11 and asyncio's loop: about 30% less CPU per
    # request. The startup lines stay at info ("Uvicorn running on ..."); the access log, a line per request,
    # only with --access-log. No WebSocket: the API serves none.
    uvicorn.run(
        create_app(settings=args.settings),
        host=args.host,
        port=args.port,
        http=HttpProtocol,
        loop="uvloop",
        ws="none",
        log_level="info",
        access_log=args.access_log,
    )


def cmd_worker(args) -> None:
    from workers import worker

    settings = args.settings
    if args.max_jobs_per_child:
        settings = dataclasses.replace(settings, max_jobs_per_child=args.max_jobs_per_child)
    worker.run(args.instance, database_url(settings), settings)


def cmd_workers(args) -> None:
    from workers import supervisor

    extra = ["--max-jobs-per-child", str(args.max_jobs_per_child)] if args.max_jobs_per_child else []
    # Long enough for a worker's grace period and its result-write retries (workers/worker.py).
    stop_timeout_s = args.settings.grace_s + 90
    sys.exit(supervisor.run(args.count, database_url(args.settings), extra, stop_timeout_s))


def _json_arg(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--{name.replace('_', '-')}: not valid JSON ({exc})") from None


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"--{name.replace('_', '-')}: {text!r} is not a number") from None


def _request_from(args) -> dict[str, Any]:
    request: dict[str, Any] = {}
    for field in spec.FIELDS:
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if field.json_type in ("object", "array"):
            value = _json_arg(field.name, value)
        elif field.json_type in ("string-array", "number-array"):
            items = [item.strip() for item in value.split(",") if item.strip()]
            value = [_number(field.name, i) for i in items] if field.json_type == "number-array" else items
        request[field.name] = value
    if args.param and not isinstance(request.setdefault("hyperparameters", {}), dict):
        raise CommandError("--hyperparameters must be a JSON object when --param is given")
    if args.param:
        request["hyperparameters"].update(_assignments(args.param))
    return request


def _assignments(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE options: the value as JSON when it parses, else as text (`--param sizing=fixed`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    return values


def _until_answered(args, queued: dict[str, Any], query: str, key: str, what: str) -> dict[str, Any]:
    """Poll a forecast or a backtest until a worker answers (or --timeout); a failure is the command's."""
    row, deadline = queued, time.monotonic() + args.timeout
    while row["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
        row = _rows(args, query, **{key: row["id"]})[0]
    if row["status"] == "queued":
        raise CommandError(
            f"{what} {row['id']} still queued after {args.timeout:.0f} s (are workers running?)"
        )
    if row["status"] == "failed":
        raise CommandError(f"{what} {row['id']} failed: {row['error']}")
    return row


def _enqueue(args, query: str, params: dict[str, Any]) -> None:
    """Run one enqueueing query, print each model it answers with, and with --wait follow them to the end."""
    with _connect(args) as conn:
        try:
            rows = run(conn, query, params)
        except RequestRejected as rejected:
            raise CommandError(rejected.message) from None
        for row in rows:
            note = " (deduplicated: an identical model exists)" if row["deduplicated"] else ""
            target = f" {row['target_col']:<5}" if query == "submit_batch" else ""
            print(f"model {row['model_id']}{target} fingerprint {row['fingerprint']}{note}")
        if not args.wait:
            return
        finished = wait_for(conn, [row["model_id"] for row in rows], args.timeout)
        for model in finished.values():
            print(
                f"model {model['id']} {model['status']}" + (f": {model['error']}" if model["error"] else "")
            )
            if model["status"] == "completed":
                print(
                    json.dumps({k: model["metrics"][k] for k in ("rmse", "r2", "directional_accuracy", "ic")})
                )
        if any(model["status"] != "completed" for model in finished.values()):
            sys.exit(1)


def cmd_submit(args) -> None:
    _enqueue(args, "submit", request_params(_request_from(args), "cli"))


def cmd_batch(args) -> None:
    _enqueue(args, "submit_batch", request_params(_request_from(args), "cli"))


def cmd_retrain(args) -> None:
    _enqueue(args, "retrain", {"model_id": args.model_id, "force": args.force, "via": "cli"})


def cmd_evolve(args) -> None:
    overrides = _request_from(args)
    for field in args.reset or []:
        overrides[field] = None  # back to the default
    params = {"parent_model_id": args.parent, "overrides": json.dumps(overrides), "via": "cli"}
    _enqueue(args, "evolve", params)


def cmd_cancel(args) -> None:
    with _connect(args) as conn:
        (row,) = run(conn, "cancel_model", {"model_id": args.model_id})
    print(f"model {row['id']} {row['status']}")


def _rows(args, query: str, **params: Any) -> list[dict[str, Any]]:
    with _connect(args) as conn, conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(db.QUERIES[query], params).fetchall()


def _require_model(args) -> str:
    rows = _rows(args, "model_status", model_id=args.model_id)
    if not rows:
        raise NotFound(f"no model with id {args.model_id}")
    return rows[0]["status"]


def cmd_lineage(args) -> None:
    rows = _rows(args, "lineage", model_id=args.model_id)
    if not rows:
        raise NotFound(f"no model with id {args.model_id}")
    chain = lineage.build(args.model_id, rows)
    print(json.dumps(chain, indent=2, default=str) if args.json else lineage.render(chain))


def cmd_features(args) -> None:
    status = _require_model(args)
    rows = _rows(args, "model_features", model_id=args.model_id)
    if not rows:
        print(f"model {args.model_id} is {status}: no feature importances yet")
    for row in rows:
        print(f"{row['rank']:>3}  {row['feature']:<24} {row['importance']:.6f}  ({row['method']})")


def cmd_predictions(args) -> None:
    status = _require_model(args)
    rows = _rows(args, "model_predictions", model_id=args.model_id)
    if not rows:
        print(f"model {args.model_id} is {status}: no predictions yet", file=sys.stderr)
        return
    print("ts,predicted,actual")
    for row in rows:
        print(f"{row['ts'].isoformat()},{row['predicted']!r},{row['actual']!r}")


def cmd_artifact(args) -> None:
    status = _require_model(args)
    rows = _rows(args, "model_artifact", model_id=args.model_id)
    if not rows:
        raise Conflict(
            f"model {args.model_id} is {status}: it has no model file (only a completed model has one)"
        )
    output = Path(args.output or f"model-{args.model_id}.{rows[0]['format']}")
    output.write_bytes(rows[0]["bytes"])
    print(f"{output}: {rows[0]['size']} bytes, sha256 {rows[0]['sha256']}")


def cmd_predict(args) -> None:
    """Like POST /models/{id}/predict: a worker loads the stored model and predicts from the latest bar."""
    with _connect(args) as conn:
        (queued,) = run(conn, "request_forecast", {"model_id": args.model_id})
    forecast = _until_answered(args, queued, "get_forecast", "forecast_id", "forecast")
    print(json.dumps(forecast, indent=2, default=str))


def cmd_simulate(args) -> None:
    """Like POST /simulate: a backtest of a completed model, run by a worker."""
    query = {
        "model_id": args.model_id,
        "strategy": args.strategy,
        "params": json.dumps(_assignments(args.param or [])),
        "priority": 0,
    }
    with _connect(args) as conn:
        (queued,) = run(conn, "request_simulation", query)
    simulation = _until_answered(args, queued, "get_simulation", "simulation_id", "simulation")
    simulation.pop("equity_curve", None)
    print(json.dumps(simulation, indent=2, default=str))


def cmd_simulations(args) -> None:
    _require_model(args)
    for row in _rows(args, "model_simulations", model_id=args.model_id):
        m = row["metrics"] or {}
        print(
            f"simulation {row['id']:>5} {row['status']:<9} {row['strategy']:<10} sharpe {m.get('sharpe')} "
            f"return {m.get('total_return')} max drawdown {m.get('max_drawdown')}  "
            f"{json.dumps(row['params'])}"
        )


def cmd_sweep(args) -> None:
    """Like POST /sweeps, from a JSON file: {"base": {...}, "grid": {...}, "priority": -10}."""
    try:
        body = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{args.file}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or not body.keys() <= {"base", "grid", "priority"}:
        raise CommandError(f"{args.file}: expected a JSON object with base, grid and optionally priority")
    params = {
        "base": json.dumps(body.get("base", {})),
        "grid": json.dumps(body.get("grid")),
        "priority": body.get("priority", sweeps.DEFAULT_PRIORITY),
        "via": "cli",
    }
    with _connect(args) as conn:
        (sweep,) = run(conn, "submit_sweep", params)
        print(
            f"sweep {sweep['id']}: {sweep['combinations']} combinations, {sweep['created']} new models, "
            f"{sweep['combinations'] - sweep['created']} reused; enqueued in {sweep['elapsed_ms']:.0f} ms"
        )
        if args.wait:
            model_ids = [row["model_id"] for row in _rows(args, "sweep_models", sweep_id=sweep["id"])]
            wait_for(conn, model_ids, args.timeout, show=lambda line: None)
            _wait_for_backtests(args, sweep["id"])
    if args.wait:
        args.sweep_id, args.sort, args.order, args.limit = sweep["id"], sweeps.DEFAULT_SORT, "desc", 20
        cmd_sweep_show(args)


def _wait_for_backtests(args, sweep_id: int, timeout: float = 60) -> None:
    """Completed models get their default backtest just after: wait for those to be written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(args, "sweep_models", sweep_id=sweep_id)
        if all(row["backtest"] is not None for row in rows if row["status"] == "completed"):
            return
        time.sleep(0.2)


def cmd_sweep_show(args) -> None:
    sweep = _rows(args, "get_sweep", sweep_id=args.sweep_id)
    if not sweep:
        raise NotFound(f"no sweep with id {args.sweep_id}")
    progress = {row["status"]: row["models"] for row in _rows(args, "sweep_progress", sweep_id=args.sweep_id)}
    board = sweeps.leaderboard(
        _rows(args, "sweep_models", sweep_id=args.sweep_id), args.sort, args.order == "desc", args.limit
    )
    print(sweeps.render(sweep[0], progress, board))


def cmd_migrate_duckdb(args) -> None:
    from queue_app import legacy

    try:
        report = legacy.migrate(database_url(args.settings), Path(args.path), args.dry_run)
    except legacy.LegacyError as exc:
        raise CommandError(str(exc)) from None
    print(report.render())


def wait_for(conn: psycopg.Connection, model_ids: list[int], timeout: float, show=None) -> dict[int, dict]:
    """Poll until every model is finished, showing live progress (`show(rows)`, a progress.View by
    default); returns the final rows."""
    show = show or progress.View().show
    deadline = time.monotonic() + timeout
    while True:
        with conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(db.QUERIES["models_progress"], {"model_ids": model_ids}).fetchall()
        show(rows)
        if all(row["status"] in TERMINAL for row in rows):
            return {row["id"]: row for row in rows}
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:.0f} s waiting for models {model_ids}")
        time.sleep(0.25)


def cmd_watch(args) -> None:
    """Live progress of the given models, or of every queued and running one, until they are done."""
    view = progress.View()
    with _connect(args) as conn:
        watched = list(args.model_ids)
        while True:
            if not args.model_ids:  # everything unfinished now, and what was watched before
                rows = conn.execute(db.QUERIES["unfinished_models"]).fetchall()
                watched = sorted(set(watched) | {row[0] for row in rows})
            if not watched:
                print("nothing queued or running")
                return
            with conn.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(db.QUERIES["models_progress"], {"model_ids": watched}).fetchall()
            view.show(rows)
            if all(row["status"] in TERMINAL for row in rows):
                return
            time.sleep(args.interval)


def cmd_status(args) -> None:
    with _connect(args) as conn:
        print(monitor.status_text(conn, args.settings.rescue_after_s))


def cmd_bars_import(args) -> None:
    with _connect(args) as conn:
        try:
            inserted, updated = bars.import_file(conn, Path(args.file), args.symbol, args.timeframe)
        except FileNotFoundError:
            raise CommandError(f"no such file: {args.file}") from None
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except bars.BadBars as bad:
            raise CommandError(f"{args.file}: {bad}") from None
    print(f"{args.symbol.upper()} {args.timeframe}: {inserted} bars inserted, {updated} updated")


def cmd_bars_sample(args) -> None:
    with _connect(args) as conn:
        for symbol, rows in bars.sample_bars():
            inserted, updated = bars.load(conn, symbol, "1d", rows)
            span = f"{rows[0].ts:%Y-%m-%d}..{rows[-1].ts:%Y-%m-%d}"
            print(f"{symbol} 1d: {inserted} bars inserted, {updated} updated ({span})")


def cmd_bars_list(args) -> None:
    with _connect(args) as conn:
        for row in conn.execute(db.QUERIES["symbols"]).fetchall():
            print(f"{row[0]:<8} {row[1]:<4} {row[2]:>7} bars  {row[3]:%Y-%m-%d} .. {row[4]:%Y-%m-%d}")


def leaderboard(
    conn: psycopg.Connection, sort: str, limit: int, status: str | None = None, order: str = "desc"
) -> str:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            db.QUERIES["list_models"],
            {
                "status": status,
                "symbol": None,
                "algorithm": None,
                "metric": None if sort == "id" else sort,
                "direction": 1 if order == "asc" else -1,
                "limit": limit,
                "offset": 0,
            },
        ).fetchall()
    lines = [
        f"{'id':>5}  {'status':<9} {'symbol':<6} {'algorithm':<20} {'target':<16} "
        f"{'dir.acc':>7} {'base':>5} {'ic':>7} {'r2':>8} {'rmse':>9}  worker"
    ]
    for row in rows:
        m = row["metrics"] or {}

        def fmt(key: str, width: int, digits: int, m=m) -> str:
            return f"{m[key]:>{width}.{digits}f}" if m.get(key) is not None else f"{'-':>{width}}"

        target = f"{row['target_col']}/{row['target_transform']}"
        worker = f"{row['worker_host']}:{row['worker_pid']}" if row["worker_pid"] else ""
        lines.append(
            f"{row['id']:>5}  {row['status']:<9} {row['symbol']:<6} {row['algorithm']:<20} {target:<16} "
            f"{fmt('directional_accuracy', 7, 3)} {fmt('directional_base_rate', 5, 2)} {fmt('ic', 7, 3)} "
            f"{fmt('r2', 8, 4)} {fmt('rmse', 9, 5)}"
            f"  {worker}"
        )
    return "\n".join(lines)


def cmd_models(args) -> None:
    with _connect(args) as conn:
        print(leaderboard(conn, args.sort, args.limit, args.status, args.order))


def cmd_model(args) -> None:
    with _connect(args) as conn, conn.cursor(row_factory=dict_row) as cursor:
        model = cursor.execute(db.QUERIES["get_model"], {"model_id": args.model_id}).fetchone()
        if model is None:
            raise CommandError(f"no model with id {args.model_id}")
        print(json.dumps(model, indent=2, default=str))


def cmd_demo(args) -> None:
    from queue_app import demo

    demo.run(args.settings, workers=args.workers)


def _model_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"not a model id: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _spec_options(
    parser: argparse.ArgumentParser, required: tuple[str, ...] = (), skip: tuple[str, ...] = ()
):
    for field in spec.FIELDS:
        if field.name in skip:
            continue
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            required=field.name in required,
            type=int if field.json_type == "integer" else str,
            help=field.help,
        )
    parser.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="one hyperparameter (JSON value), repeatable"
    )


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until the models are trained")
    parser.add_argument("--timeout", type=float, default=3600)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfq", description="Strategy-factory training queue on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db_parser = sub.add_parser("db", help="database: upgrade, roles, url, stop (the private cluster)")
    db_sub = db_parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="create or upgrade the schema (no-op when current)").set_defaults(
        func=cmd_db_upgrade
    )
    db_sub.add_parser(
        "roles", help="create or update the roles sfq_submitter, sfq_worker, sfq_api (docs/security.md)"
    ).set_defaults(func=cmd_db_roles)
    db_sub.add_parser("url", help="print the database URL in use").set_defaults(func=cmd_db_url)
    db_sub.add_parser("stop", help="stop sfq's private PostgreSQL cluster").set_defaults(func=cmd_db_stop)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--access-log", action="store_true", help="log a line per request (method, path, status); default off"
    )
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run worker daemon N (what systemd's worker@N runs)")
    worker.add_argument("instance", type=int)
    worker.add_argument(
        "--max-jobs-per-child",
        type=int,
        default=None,
        help="recycle the training process after this many jobs (default 10)",
    )
    worker.set_defaults(func=cmd_worker)

    workers = sub.add_parser("workers", help="run N worker daemons, restarting any that exits")
    workers.add_argument(
        "--count", type=_positive, default=os.cpu_count() or 1, help="default: the number of cores"
    )
    workers.add_argument("--max-jobs-per-child", type=int, default=None)
    workers.set_defaults(func=cmd_workers)

    submit_parser = sub.add_parser("submit", help="submit a training request")
    _spec_options(submit_parser, required=("symbol",))
    _wait_options(submit_parser)
    submit_parser.set_defaults(func=cmd_submit)

    batch = sub.add_parser("batch", help="one spec, four models: one per target (open, close, high, low)")
    _spec_options(batch, required=("symbol",), skip=("target_col",))
    _wait_options(batch)
    batch.set_defaults(func=cmd_batch)

    retrain = sub.add_parser("retrain", help="train a model's spec again on the bars there are now")
    retrain.add_argument("model_id", type=_model_id)
    retrain.add_argument("--force", action="store_true", help="a fresh run even without new bars")
    _wait_options(retrain)
    retrain.set_defaults(func=cmd_retrain)

    evolve = sub.add_parser("evolve", help="a child model: the parent's spec with the options given changed")
    evolve.add_argument("parent", type=_model_id, metavar="PARENT_MODEL_ID")
    _spec_options(evolve, skip=("parent_model_id", "retrain_of", "run"))
    evolve.add_argument("--reset", action="append", metavar="FIELD", help="set FIELD back to its default")
    _wait_options(evolve)
    evolve.set_defaults(func=cmd_evolve)

    watch = sub.add_parser("watch", help="live progress bars of models (default: all queued and running)")
    watch.add_argument("model_ids", nargs="*", type=_model_id)
    watch.add_argument("--interval", type=float, default=0.5)
    watch.set_defaults(func=cmd_watch)

    sub.add_parser("status", help="workers, queue depth, throughput and recent failures").set_defaults(
        func=cmd_status
    )

    cancel = sub.add_parser("cancel", help="cancel a queued or running model")
    cancel.add_argument("model_id", type=_model_id)
    cancel.set_defaults(func=cmd_cancel)

    lineage_parser = sub.add_parser("lineage", help="a model's ancestors and descendants, with what changed")
    lineage_parser.add_argument("model_id", type=_model_id)
    lineage_parser.add_argument("--json", action="store_true")
    lineage_parser.set_defaults(func=cmd_lineage)

    for name, func, what in (
        ("features", cmd_features, "a model's feature importances, ranked"),
        ("predictions", cmd_predictions, "a model's held-out predictions next to the actual values (CSV)"),
        ("predict", cmd_predict, "predict from the latest bar with a trained model (run by a worker)"),
        ("artifact", cmd_artifact, "save a model's file (skops) and print its SHA-256"),
    ):
        command = sub.add_parser(name, help=what)
        command.add_argument("model_id", type=_model_id)
        command.set_defaults(func=func)
        if name == "artifact":
            command.add_argument("-o", "--output", help="file to write (default model-ID.skops)")
        if name == "predict":
            command.add_argument("--timeout", type=float, default=60)

    simulate = sub.add_parser("simulate", help="backtest a completed model (run by a worker)")
    simulate.add_argument("model_id", type=_model_id)
    simulate.add_argument("--strategy", default="long_short", help="long_short (default) or long_only")
    simulate.add_argument("--param", action="append", metavar="NAME=VALUE", help="a strategy parameter")
    simulate.add_argument("--timeout", type=float, default=60)
    simulate.set_defaults(func=cmd_simulate)

    simulations = sub.add_parser("simulations", help="a model's backtests")
    simulations.add_argument("model_id", type=_model_id)
    simulations.set_defaults(func=cmd_simulations)

    sweep = sub.add_parser("sweep", help="one model per combination of a grid, from a JSON file")
    sweep.add_argument(
        "file", help='{"base": {spec}, "grid": {"field": [values], "hyperparameters.x": [...]}}'
    )
    _wait_options(sweep)
    sweep.set_defaults(func=cmd_sweep)

    sweep_show = sub.add_parser("sweep-show", help="a sweep's progress and leaderboard (PSR, DSR)")
    sweep_show.add_argument("sweep_id", type=_model_id)
    sweep_show.add_argument("--sort", default=sweeps.DEFAULT_SORT, help="a metric, or backtest.<metric>")
    sweep_show.add_argument("--order", choices=["asc", "desc"], default="desc")
    sweep_show.add_argument("--limit", type=int, default=20)
    sweep_show.set_defaults(func=cmd_sweep_show)

    migrate = sub.add_parser("migrate-duckdb", help="import the old service's DuckDB database")
    migrate.add_argument("path")
    migrate.add_argument("--dry-run", action="store_true", help="do everything, report, then roll back")
    migrate.set_defaults(func=cmd_migrate_duckdb)

    bars_parser = sub.add_parser("bars", help="price bars: import, sample, list")
    bars_sub = bars_parser.add_subparsers(dest="bars_command", required=True, metavar="ACTION")
    imp = bars_sub.add_parser("import", help="import OHLCV bars from a CSV file")
    imp.add_argument("file")
    imp.add_argument("--symbol", required=True)
    imp.add_argument("--timeframe", default="1d")
    imp.set_defaults(func=cmd_bars_import)
    bars_sub.add_parser(
        "sample", help="load real daily bars of AAPL, MSFT, IBM, GOOG (offline)"
    ).set_defaults(func=cmd_bars_sample)
    bars_sub.add_parser("list", help="symbols and their bar counts").set_defaults(func=cmd_bars_list)

    models = sub.add_parser("models", help="list models (a leaderboard with --sort METRIC)")
    models.add_argument(
        "--sort", default="id", help="id or a metric, e.g. directional_accuracy, ic, r2, rmse"
    )
    models.add_argument("--order", choices=["asc", "desc"], default="desc")
    models.add_argument("--status", choices=["queued", "running", "completed", "failed", "cancelled"])
    models.add_argument("--limit", type=int, default=20)
    models.set_defaults(func=cmd_models)

    model = sub.add_parser("model", help="show one model")
    model.add_argument("model_id", type=_model_id)
    model.set_defaults(func=cmd_model)

    demo = sub.add_parser("demo", help="the end-to-end demo: real bars, real workers, results")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.settings = Settings.from_env()
    try:
        args.func(args)
    except (CommandError, embedded.EmbeddedError, db.MigrationError, NotFound, Conflict) as exc:
        sys.exit(f"sfq: {exc}".replace("sfq: sfq: ", "sfq: "))
    except RequestRejected as exc:
        sys.exit(f"sfq: {exc.message}")
    except psycopg.OperationalError as exc:
        sys.exit(f"sfq: cannot reach the database: {str(exc).strip()}")
    except psycopg.errors.UndefinedTable as exc:
        sys.exit(
            f"sfq: the database has no sfq schema yet; run `sfq db upgrade` ({exc.diag.message_primary})"
        )
    except psycopg.Error as exc:
        sys.exit(f"sfq: database error: {exc.diag.message_primary or exc}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
