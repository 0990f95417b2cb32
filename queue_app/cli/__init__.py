"""`sfq`: the command line front end. Each command group builds its own parsers (`models`, `research`,
`operations`); the worker daemon's commands (`sfq worker`, `sfq workers`) come from the workers package
through the `sfq.commands` entry point, so the core never imports the workers. Errors are one clear line
on stderr and a non-zero exit status (`exit_status`, the one place that decides both), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

import psycopg

from queue_app.cli import models, operations, research, strategies
from queue_app.config import Settings
from queue_app.errors import SfqError

COMMAND_GROUPS = (models, research, operations, strategies)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sfq", description="Strategy-factory training queue on PostgreSQL.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    for plugin in entry_points(group="sfq.commands"):  # the workers' daemon commands
        plugin.load()(sub)
    return top


def exit_status(error: BaseException) -> tuple[int, str]:
    """The exit status and the line on stderr for an error that ends a command."""
    if isinstance(error, KeyboardInterrupt):
        return 130, ""
    if isinstance(error, SfqError):
        return 1, f"sfq: {error}"
    diag = error.diag.message_primary if isinstance(error, psycopg.Error) else None
    return 1, f"sfq: database error: {diag or str(error).strip()}"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.settings = Settings.from_env()
        status = args.func(args) or 0
    except (SfqError, psycopg.Error, KeyboardInterrupt) as error:
        status, line = exit_status(error)
        if line:
            print(line, file=sys.stderr)
    sys.exit(status)
