"""`sfq simulate | lockbox | simulations | sweep | sweep-show`: backtests of a model, its lockbox, and
sweeps of many."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from queue_app import gateway, params, sweeps
from queue_app.cli.common import assignments, connect, model_id, run, until_answered, wait_for, wait_options
from queue_app.errors import NotFound, Rejected


def cmd_simulate(args: argparse.Namespace) -> None:
    """Like POST /simulate: a backtest of a completed model, run by a worker."""
    asked = gateway.request_simulation(args.model_id, args.strategy, assignments(args.param or []), 0)
    simulation = until_answered(args, run(args, asked), gateway.get_simulation, "simulation")
    simulation.pop("equity_curve", None)
    print(json.dumps(simulation, indent=2, default=str))


def cmd_lockbox(args: argparse.Namespace) -> None:
    """Like POST /models/{id}/lockbox: the model's one evaluation on its lockbox, counted as a look."""
    asked = run(args, gateway.request_lockbox(args.model_id))
    answered = until_answered(args, asked, gateway.get_simulation, "lockbox evaluation")
    simulation = run(args, gateway.get_simulation(answered["id"]))
    simulation.pop("equity_curve", None)
    print(json.dumps(simulation, indent=2, default=str))
    print(f"lockbox looks: {simulation['lockbox_looks']} (every look is counted on model {args.model_id})")


def cmd_simulations(args: argparse.Namespace) -> None:
    if run(args, gateway.model_status(args.model_id)) is None:
        raise NotFound(f"no model with id {args.model_id}")
    for row in run(args, gateway.model_simulations(args.model_id)):
        m = row["metrics"] or {}
        print(
            f"simulation {row['id']:>5} {row['status']:<9} {row['strategy']:<10} sharpe {m.get('sharpe')} "
            f"return {m.get('total_return')} max drawdown {m.get('max_drawdown')}  "
            f"{json.dumps(row['params'])}"
        )


def _sweep_file(path: str) -> dict:
    try:
        body = json.loads(Path(path).read_text())
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise Rejected(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or not body.keys() <= {"base", "grid", "priority"}:
        raise Rejected(f"{path}: expected a JSON object with base, grid and optionally priority")
    return body


def cmd_sweep(args: argparse.Namespace) -> None:
    """Like POST /sweeps, from a JSON file: {"base": {...}, "grid": {...}, "priority": -10}."""
    body = _sweep_file(args.file)
    priority = body.get("priority", sweeps.DEFAULT_PRIORITY)
    with connect(args) as conn:
        sweep = gateway.run(
            conn, gateway.submit_sweep(body.get("base", {}), body.get("grid"), priority, "cli")
        )
        print(
            f"sweep {sweep['id']}: {sweep['combinations']} combinations, {sweep['created']} new models, "
            f"{sweep['combinations'] - sweep['created']} reused; enqueued in {sweep['elapsed_ms']:.0f} ms"
        )
        if not args.wait:
            return
        members = gateway.run(conn, gateway.sweep_models(sweep["id"]))
        wait_for(conn, [row["model_id"] for row in members], args.timeout, show=lambda rows: None)
        _wait_for_backtests(conn, sweep["id"])
    _show(args, sweep["id"], params.SweepQuery())


def _wait_for_backtests(conn, sweep_id: int, timeout: float = 60) -> None:
    """Completed models get their default backtest just after: wait for those to be written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = gateway.run(conn, gateway.sweep_models(sweep_id))
        if all(row["backtest"] is not None for row in rows if row["status"] == "completed"):
            return
        time.sleep(0.2)


def _show(args: argparse.Namespace, sweep_id: int, query: params.SweepQuery) -> None:
    with connect(args) as conn:
        sweep = gateway.run(conn, gateway.get_sweep(sweep_id))
        if sweep is None:
            raise NotFound(f"no sweep with id {sweep_id}")
        progress = gateway.run(conn, gateway.sweep_progress(sweep_id))
        members = gateway.run(conn, gateway.sweep_models(sweep_id))
        board = sweeps.leaderboard(members, query, gateway.run(conn, gateway.sweep_equity_curves(sweep_id)))
    print(sweeps.render(sweep, progress, board))


def cmd_sweep_show(args: argparse.Namespace) -> None:
    query = params.SweepQuery.parse({"sort": args.sort, "order": args.order, "limit": str(args.limit)})
    _show(args, args.sweep_id, query)


def register(sub: argparse._SubParsersAction) -> None:
    simulate = sub.add_parser("simulate", help="backtest a completed model (run by a worker)")
    simulate.add_argument("model_id", type=model_id)
    simulate.add_argument("--strategy", default="long_short", help="long_short (default) or long_only")
    simulate.add_argument("--param", action="append", metavar="NAME=VALUE", help="a strategy parameter")
    simulate.add_argument("--timeout", type=float, default=60)
    simulate.set_defaults(func=cmd_simulate)

    lockbox = sub.add_parser("lockbox", help="evaluate a model once on its lockbox (every look counted)")
    lockbox.add_argument("model_id", type=model_id)
    lockbox.add_argument("--timeout", type=float, default=60)
    lockbox.set_defaults(func=cmd_lockbox)

    simulations = sub.add_parser("simulations", help="a model's backtests")
    simulations.add_argument("model_id", type=model_id)
    simulations.set_defaults(func=cmd_simulations)

    sweep = sub.add_parser("sweep", help="one model per combination of a grid, from a JSON file")
    sweep.add_argument(
        "file", help='{"base": {spec}, "grid": {"field": [values], "hyperparameters.x": [...]}}'
    )
    wait_options(sweep)
    sweep.set_defaults(func=cmd_sweep)

    show = sub.add_parser("sweep-show", help="a sweep's progress and leaderboard (PSR, DSR)")
    show.add_argument("sweep_id", type=model_id)
    show.add_argument("--sort", default=params.SWEEP_SORT, help="a metric, or backtest.<metric>")
    show.add_argument("--order", choices=["asc", "desc"], default="desc")
    show.add_argument("--limit", type=int, default=20)
    show.set_defaults(func=cmd_sweep_show)
