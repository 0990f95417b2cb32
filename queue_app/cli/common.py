"""What the CLI's commands share: the database connection, argument types and spec options, and waiting
for models, forecasts and backtests with live progress."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg

from queue_app import gateway, spec
from queue_app.cli import progress
from queue_app.config import database_url
from queue_app.errors import Rejected, Unavailable
from queue_app.gateway import Call
from queue_app.vocabulary import FINISHED


def connect(args: argparse.Namespace) -> psycopg.Connection:
    return gateway.connect(database_url(args.settings), autocommit=True)


def run(args: argparse.Namespace, call: Call[Any]) -> Any:
    """One call on a connection of its own (the commands that read one thing)."""
    with connect(args) as conn:
        return gateway.run(conn, call)


def model_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"not a model id: {text!r}")
    return int(text)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def json_option(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected(f"--{name.replace('_', '-')}: not valid JSON ({exc})", name) from None


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Rejected(f"--{name.replace('_', '-')}: {text!r} is not a number", name) from None


def assignments(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE options: the value as JSON when it parses, else as text (`--param sizing=fixed`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    return values


def spec_options(parser: argparse.ArgumentParser, required: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
    """One option per request field (queue_app.spec.FIELDS), and --param NAME=VALUE."""
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


def request_from(args: argparse.Namespace) -> dict[str, Any]:
    """The request the spec options describe (JSON as the API takes it)."""
    request: dict[str, Any] = {}
    for field in spec.FIELDS:
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if field.json_type in ("object", "array"):
            value = json_option(field.name, value)
        elif field.json_type in ("string-array", "number-array"):
            items = [item.strip() for item in value.split(",") if item.strip()]
            value = [_number(field.name, i) for i in items] if field.json_type == "number-array" else items
        request[field.name] = value
    if args.param and not isinstance(request.setdefault("hyperparameters", {}), dict):
        raise Rejected("--hyperparameters must be a JSON object when --param is given", "hyperparameters")
    if args.param:
        request["hyperparameters"].update(assignments(args.param))
    return request


def wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until the models are trained")
    parser.add_argument("--timeout", type=float, default=3600)


def wait_for(
    conn: psycopg.Connection,
    model_ids: list[int],
    timeout: float,
    show: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Poll until every model is finished, showing live progress (`show(rows)`, a progress.View by
    default); returns the final rows by id."""
    show = show or progress.View().show
    deadline = time.monotonic() + timeout
    while True:
        rows = gateway.run(conn, gateway.models_progress(model_ids))
        show(rows)
        if all(row["status"] in FINISHED for row in rows):
            return {row["id"]: row for row in rows}
        if time.monotonic() > deadline:
            raise Unavailable(f"timed out after {timeout:.0f} s waiting for models {model_ids}")
        time.sleep(0.25)


def until_answered(
    args: argparse.Namespace, queued: dict[str, Any], poll: Callable[[int], Call[Any]], what: str
) -> dict[str, Any]:
    """Poll a forecast or a backtest until a worker answers (or --timeout); a failure is the command's."""
    row, deadline = queued, time.monotonic() + args.timeout
    with connect(args) as conn:
        while row["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
            row = gateway.run(conn, poll(row["id"]))
    if row["status"] == "queued":
        raise Unavailable(
            f"{what} {row['id']} still queued after {args.timeout:.0f} s (are workers running?)"
        )
    if row["status"] == "failed":
        raise Rejected(f"{what} {row['id']} failed: {row['error']}")
    return row
