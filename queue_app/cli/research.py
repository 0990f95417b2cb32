"""`sfq simulate | lockbox | simulations | sweep | sweep-show | study`: backtests of a model, its lockbox,
sweeps of many, and studies (searches that learn, advanced by the workers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from queue_app import gateway, params, studies, sweeps
from queue_app.cli.common import assignments, connect, model_id, run, until_answered, wait_for, wait_options
from queue_app.errors import NotFound, Rejected, Unavailable


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


def _json_file(path: str) -> object:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise Rejected(f"{path}: not valid JSON ({exc})") from None


def _sweep_file(path: str) -> dict:
    body = _json_file(path)
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


def cmd_study_create(args: argparse.Namespace) -> None:
    """Like POST /studies, from a JSON file (the study object: base, space, objective, sampler, ...)."""
    study = run(args, gateway.create_study(_json_file(args.file), "cli"))
    budget = " and ".join(
        part
        for part in (
            f"{study['n_trials']} trials" if study["n_trials"] else "",
            f"{study['cpu_seconds']:g} core-seconds" if study["cpu_seconds"] else "",
        )
        if part
    )
    print(
        f"study {study['id']}: sampler {study['sampler']}, pruner {study['pruner']}, "
        f"objective {', '.join(study['objectives'])}, budget {budget}"
    )
    if args.wait:
        _wait_for_study(args, study["id"])
        _show_study(args, study["id"])


def _wait_for_study(args: argparse.Namespace, study_id: int) -> None:
    """Poll until the study has ended and none of its trials runs, showing its progress on one line."""
    deadline = time.monotonic() + args.timeout
    with connect(args) as conn:
        while True:
            study = gateway.run(conn, gateway.get_study(study_id))
            board = studies.report(study, gateway.run(conn, gateway.study_trials(study_id)), False)
            done = board["progress"]
            best = board["best"][0]["values"][0] if len(board["best"]) == 1 else None
            line = (
                f"\rstudy {study_id}: {study['state']}, trials {done['trials']}/{study['n_trials'] or '-'} "
                f"(running {done['running']}, pruned {done['pruned']}, failed {done['failed']}), "
                f"best {best if best is None else round(best, 4)}"
            )
            sys.stderr.write(line if sys.stderr.isatty() else line[1:] + "\n")
            if study["state"] != "running" and done["running"] == 0:
                sys.stderr.write("\n" if sys.stderr.isatty() else "")
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"timed out after {args.timeout:.0f} s waiting for study {study_id}")
            time.sleep(1 if sys.stderr.isatty() else 5)


def _show_study(args: argparse.Namespace, study_id: int) -> None:
    with connect(args) as conn:
        study = gateway.run(conn, gateway.get_study(study_id))
        if study is None:
            raise NotFound(f"no study with id {study_id}")
        trials = gateway.run(conn, gateway.study_trials(study_id))
    print(studies.render(studies.report(study, trials)))


def cmd_study_show(args: argparse.Namespace) -> None:
    _show_study(args, args.study_id)


def cmd_study_stop(args: argparse.Namespace) -> None:
    study = run(args, gateway.stop_study(args.study_id))
    print(f"study {study['id']}: {study['state']}" + (f" ({study['reason']})" if study["reason"] else ""))


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

    study = sub.add_parser("study", help="studies: searches with Optuna's samplers and pruners")
    actions = study.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="start a study from a JSON file (as POST /studies)")
    create.add_argument(
        "file", help='{"base": {spec}, "space": {...}, "objective": "cv_ic", "n_trials": 100}'
    )
    wait_options(create)
    create.set_defaults(func=cmd_study_create)
    show_study = actions.add_parser("show", help="a study's progress, best trial and leaderboard")
    show_study.add_argument("study_id", type=model_id)
    show_study.set_defaults(func=cmd_study_show)
    stop = actions.add_parser("stop", help="ask a study for no more trials (running ones finish)")
    stop.add_argument("study_id", type=model_id)
    stop.set_defaults(func=cmd_study_stop)
