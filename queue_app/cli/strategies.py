"""`sfq alias | promote | strategy`: the registry of named strategies. An alias moves through the same
SQL function as over HTTP and SQL (sfq_move_alias), recorded under the CLI's database role."""

from __future__ import annotations

import argparse
import json

from queue_app import gateway
from queue_app.cli.common import model_id, run
from queue_app.errors import NotFound

PRODUCTION = "production"


def _move(args: argparse.Namespace, alias: str) -> None:
    moved = run(args, gateway.move_alias(args.strategy, alias, args.model_id, args.reason, None, "cli"))
    previous = f" (was model {moved['previous_model_id']})" if moved["previous_model_id"] else ""
    print(
        f"{args.strategy}/{alias} -> model {moved['model_id']}{previous} "
        f"by {moved['moved_by']} at {moved['moved_at'].isoformat()}: {moved['reason']}"
    )


def cmd_alias(args: argparse.Namespace) -> None:
    _move(args, args.alias)


def cmd_promote(args: argparse.Namespace) -> None:
    _move(args, PRODUCTION)


def cmd_strategy(args: argparse.Namespace) -> None:
    """A strategy's aliases with their live records beside their models' held-out figures, and its history."""
    if run(args, gateway.get_strategy(args.strategy)) is None:
        raise NotFound(f"no strategy named {args.strategy!r}")
    for row in run(args, gateway.strategy_aliases(args.strategy)):
        live, held_out = row["live"] or {}, row["held_out"] or {}
        print(
            f"{row['alias']:<12} model {row['model_id']:<6} {row['symbol']} {row['timeframe']} "
            f"forecasts {row['forecasts'] or 0} realised {row['realised'] or 0}  "
            f"live dir.acc {live.get('directional_accuracy')} ic {live.get('ic')}  "
            f"held-out dir.acc {held_out.get('directional_accuracy')} ic {held_out.get('ic')}  "
            f"decayed {(live.get('decay') or {}).get('decayed')}"
        )
    for policy in run(args, gateway.strategy_retrain_policies(args.strategy)):
        print(
            f"retrain {policy['alias']}: {json.dumps(policy['policy'])} objective {policy['objective']} "
            f"({policy['direction']}) tolerance {policy['tolerance']}"
        )
    for retrain in run(args, gateway.strategy_retrains(args.strategy, None if args.history else 5)):
        print(
            f"retrain {retrain['id']} {retrain['alias']} ({retrain['cause']}) model {retrain['model_id']}: "
            f"{retrain['verdict'] or 'training'}" + (f": {retrain['reason']}" if retrain["reason"] else "")
        )
    if args.history:
        for move in run(args, gateway.strategy_history(args.strategy)):
            print(json.dumps(move, default=str))


def cmd_retrain_policy(args: argparse.Namespace) -> None:
    """Set an alias's retrain policy through sfq_set_retrain_policy (which checks it), as the CLI's role."""
    if args.every_n_bars is not None:
        policy = {"kind": "every_n_bars", "n": args.every_n_bars}
    elif args.weekly is not None:
        policy = {"kind": "weekly", "weekday": args.weekly[0], "time": args.weekly[1]}
    else:
        policy = {"kind": "cron", "cron": args.cron}
    saved = run(
        args,
        gateway.set_retrain_policy(
            args.strategy, args.alias, policy, args.tolerance, args.objective, None, "cli"
        ),
    )
    print(
        f"{saved['strategy']}/{saved['alias']} retrains {json.dumps(saved['policy'])} (UTC); "
        f"it moves only if {saved['objective']} is not worse than the champion's "
        f"by more than {saved['tolerance']}"
    )


def register(sub: argparse._SubParsersAction) -> None:
    alias = sub.add_parser("alias", help="point a strategy's alias at a completed model")
    alias.add_argument("strategy", help="the strategy's name: a-z, 0-9, _ or -")
    alias.add_argument("alias", help="the alias: production, candidate, ... (a-z, 0-9, _ or -)")
    alias.add_argument("model_id", type=model_id)
    alias.add_argument("--reason", required=True, help="why the alias moves (kept in its history)")
    alias.set_defaults(func=cmd_alias)
    promote = sub.add_parser("promote", help="point a strategy's production alias at a completed model")
    promote.add_argument("strategy", help="the strategy's name: a-z, 0-9, _ or -")
    promote.add_argument("model_id", type=model_id)
    promote.add_argument("--reason", required=True, help="why (kept in the strategy's history)")
    promote.set_defaults(func=cmd_promote)
    show = sub.add_parser("strategy", help="a strategy's aliases, live records and (--history) alias moves")
    show.add_argument("strategy")
    show.add_argument("--history", action="store_true", help="also every alias move, newest first")
    show.set_defaults(func=cmd_strategy)
    policy = sub.add_parser(
        "retrain-policy",
        help="retrain a strategy's alias every n bars, weekly or by cron (UTC), champion/challenger",
    )
    policy.add_argument("strategy")
    policy.add_argument("alias", help="the alias whose model is retrained (production, ...)")
    schedule = policy.add_mutually_exclusive_group(required=True)
    schedule.add_argument("--every-n-bars", type=int, metavar="N", help="after every N bars appended")
    schedule.add_argument("--weekly", nargs=2, metavar=("WEEKDAY", "HH:MM"), help="e.g. friday 21:30 (UTC)")
    schedule.add_argument("--cron", metavar="EXPRESSION", help='five fields in UTC, e.g. "0 22 * * 1-5"')
    policy.add_argument(
        "--tolerance",
        type=float,
        help="how much worse than the champion the objective may be (default 0)",
    )
    policy.add_argument(
        "--objective", default=None, help="the metric compared (default cv_ic; README: Retrain policies)"
    )
    policy.set_defaults(func=cmd_retrain_policy)
