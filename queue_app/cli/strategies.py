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
    if args.history:
        for move in run(args, gateway.strategy_history(args.strategy)):
            print(json.dumps(move, default=str))


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
