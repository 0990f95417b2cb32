"""`sfq migrate-duckdb`: the old training service's DuckDB file into PostgreSQL, in one transaction.

The old service (FastAPI, a process pool, DuckDB) kept three tables. The import reads these columns
(others, such as the old service's own `fingerprint`, are ignored); a missing table or column, or a
column of another kind, makes the file "not a legacy layout" and nothing is imported:

    models(id INTEGER, symbol, timeframe, algorithm, target_col, target_transform VARCHAR,
           horizon INTEGER, hyperparameters JSON, features JSON or comma list, train_window, test_window,
           cv_folds INTEGER, cv_strategy VARCHAR, context_symbols, alpha_grid, l1_ratio_grid JSON or comma
           list, regime_configs JSON, data_end TIMESTAMP, parent_model_id INTEGER, status VARCHAR,
           created_at, completed_at TIMESTAMP, metrics JSON, error VARCHAR)
    features_log(model_id INTEGER, feature_name VARCHAR, importance DOUBLE, logged_at TIMESTAMP)
    simulation_history(id, model_id INTEGER, strategy VARCHAR, params JSON, start_date, end_date DATE,
                       total_return, sharpe, max_drawdown DOUBLE, n_trades INTEGER, equity_curve JSON,
                       created_at TIMESTAMP)

JSON columns are VARCHAR or DuckDB's JSON, LIST, STRUCT or MAP; NaN in JSON text reads as null; an empty
or NULL spec field takes sfq's default; timestamps without a zone are UTC. Each legacy model goes through
sfq_canonical_request (validation, defaults, fingerprint, the legacy data_end kept): a row it refuses is
reported with the reason, not imported. docs/legacy-duckdb.md has the mapping and what is reported.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from queue_app import gateway
from queue_app.errors import Rejected

# DuckDB column types each kind of legacy column may have.
KINDS = {
    "integer": r"U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?",
    "number": r"U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|REAL|DOUBLE|DECIMAL\(.*\)",
    "text": r"VARCHAR|ENUM\(.*\)",
    "json": r"VARCHAR|JSON|.*\[\d*\]|STRUCT\(.*\)|MAP\(.*\)",
    "time": r"DATE|TIMESTAMP.*",
}
LAYOUT = {
    "models": {
        "id": "integer", "symbol": "text", "timeframe": "text", "algorithm": "text", "target_col": "text",
        "target_transform": "text", "horizon": "integer", "hyperparameters": "json", "features": "json",
        "train_window": "integer", "test_window": "integer", "cv_folds": "integer", "cv_strategy": "text",
        "context_symbols": "json", "alpha_grid": "json", "l1_ratio_grid": "json", "regime_configs": "json",
        "data_end": "time", "parent_model_id": "integer", "status": "text", "created_at": "time",
        "completed_at": "time", "metrics": "json", "error": "text",
    },
    "features_log": {
        "model_id": "integer", "feature_name": "text", "importance": "number", "logged_at": "time",
    },
    "simulation_history": {
        "id": "integer", "model_id": "integer", "strategy": "text", "params": "json", "start_date": "time",
        "end_date": "time", "total_return": "number", "sharpe": "number", "max_drawdown": "number",
        "n_trades": "number", "equity_curve": "json", "created_at": "time",
    },
}  # fmt: skip
SPEC_FIELDS = (
    "symbol", "timeframe", "target_col", "target_transform", "horizon", "algorithm", "train_window",
    "test_window", "cv_folds", "cv_strategy", "data_end",
)  # fmt: skip
# A legacy model that was still queued or running cannot be resumed (its process pool is gone); it is
# imported as failed, so that the same spec can be submitted again, and never picked up by a worker.
STATUSES = {"completed": "completed", "failed": "failed", "cancelled": "cancelled", "canceled": "cancelled"}
UNFINISHED = ("queued", "pending", "running")
SIMULATION_METRICS = ("total_return", "sharpe", "max_drawdown", "n_trades")
# Parameters sfq sets itself (workers/modelling/algorithms.py CONTROLLED_PARAMS; tests/test_contract.py
# keeps the two equal). The old service stored them with the others; they are dropped, not refused.
RUNTIME_PARAMS = ("random_state", "n_jobs", "verbose", "warm_start", "copy_X")


class _Unmappable(Rejected):
    """A legacy row that cannot be imported; the message is the reason reported."""


@dataclass
class TableReport:
    read: int = 0
    inserted: int = 0
    skipped: int = 0  # already present (or a duplicate of a row that is)
    unmappable: list[tuple[str, str]] = field(default_factory=list)  # (legacy row, reason)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    file: str
    dry_run: bool
    models: TableReport = field(default_factory=TableReport)
    features_log: TableReport = field(default_factory=TableReport)
    simulation_history: TableReport = field(default_factory=TableReport)

    def render(self) -> str:
        verb = "to insert" if self.dry_run else "inserted"
        lines = [
            f"{self.file}: dry run, rolled back (nothing was written)"
            if self.dry_run
            else f"{self.file}: imported"
        ]
        for name in LAYOUT:
            table: TableReport = getattr(self, name)
            lines.append(
                f"{name:<19} read {table.read}, {verb} {table.inserted}, already present {table.skipped}, "
                f"unmappable {len(table.unmappable)}"
            )
            lines += [f"  {note}" for note in table.notes]
            lines += [f"  unmappable {row}: {reason}" for row, reason in table.unmappable]
        return "\n".join(lines)


def migrate(url: str, path: Path, dry_run: bool) -> Report:
    """Import the file in one transaction (rolled back when `dry_run`); Rejected if the file is unreadable
    or not the old service's layout (nothing imported)."""
    if not path.is_file():
        raise Rejected(f"no such file: {path}")
    try:
        with duckdb.connect(str(path), read_only=True) as duck:
            _check_layout(duck, path.name)
            report = Report(path.name, dry_run)
            with gateway.connect(url) as conn, conn.transaction() as tx:
                gateway.run(conn, gateway.begin_import())
                gateway.run(conn, gateway.create_import_tables())
                mapping = _import_models(conn, duck, report)
                _import_features(conn, duck, mapping, report)
                _import_simulations(conn, duck, mapping, report)
                if dry_run:
                    raise psycopg.Rollback(tx)
            return report
    except duckdb.Error as exc:
        raise Rejected(f"cannot read {path} as a DuckDB database: {exc}") from None


def _check_layout(duck: duckdb.DuckDBPyConnection, name: str) -> None:
    found: dict[str, dict[str, str]] = {}
    for row in gateway.duckdb_columns(duck):
        found.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    problems = []
    for table, columns in LAYOUT.items():
        if table not in found:
            problems.append(f"no table {table}")
            continue
        for column, kind in columns.items():
            actual = found[table].get(column)
            if actual is None:
                problems.append(f"no column {table}.{column}")
            elif not re.fullmatch(KINDS[kind], actual.upper()):
                problems.append(f"{table}.{column} is {actual}, expected {kind}")
    if problems:
        raise Rejected(f"{name} is not the old service's layout: {'; '.join(problems)}")


@dataclass
class _Mapping:
    """Where the legacy models went."""

    models: dict[int, int] = field(default_factory=dict)  # legacy id -> model id
    refused: dict[int, str] = field(default_factory=dict)  # legacy id -> reason
    duplicates: set[int] = field(default_factory=set)  # legacy ids whose model came from another row

    def model_of(self, legacy_id: int) -> int:
        if legacy_id in self.models:
            return self.models[legacy_id]
        if legacy_id in self.refused:
            raise _Unmappable(f"legacy model {legacy_id} was not imported")
        raise _Unmappable(f"no legacy model {legacy_id} in the file")


def _import_models(conn: psycopg.Connection, duck: duckdb.DuckDBPyConnection, report: Report) -> _Mapping:
    """Each legacy model in a savepoint of its own: a refused row is reported, the others stay."""
    table = report.models
    defaults = json.dumps(gateway.run(conn, gateway.request_defaults()))
    mapping = _Mapping()
    mapped, refused = mapping.models, mapping.refused
    first_legacy: dict[int, int] = {}  # model id -> the first legacy id mapped to it
    parents: dict[int, int] = {}  # inserted model id -> its legacy parent id
    for row in gateway.duckdb_models(duck):
        table.read += 1
        legacy_id = row["id"]
        try:
            if legacy_id is None or legacy_id in mapped or legacy_id in refused:
                raise _Unmappable("id: missing, or twice in the file")
            params = _model_params(row, report.file) | {"defaults": defaults}
            try:
                with conn.transaction():
                    imported = gateway.run(conn, gateway.import_model(params))
            except Rejected as rejected:
                raise _Unmappable(_reason(rejected)) from None
            outcome, model_id, duplicate_of = (
                imported["outcome"],
                imported["model_id"],
                imported["duplicate_of"],
            )
            if model_id is None:  # a live model with its fingerprint appeared while this statement ran
                raise _Unmappable("the same spec was submitted during the import; run it again")
            if outcome == "conflict":
                raise _Unmappable(
                    f"model {model_id} was imported from another {report.file} with a different spec for "
                    "this legacy id; rename one of the files"
                )
        except _Unmappable as unmappable:
            refused[legacy_id] = str(unmappable)
            table.unmappable.append((f"id {legacy_id}", str(unmappable)))
            continue
        mapped[legacy_id] = model_id
        if outcome == "inserted":
            table.inserted += 1
            if row["parent_model_id"] is not None:
                parents[model_id] = row["parent_model_id"]
        else:
            table.skipped += 1
        if outcome == "duplicate":
            mapping.duplicates.add(legacy_id)
            if (first := first_legacy.get(model_id)) is not None:
                like = f"legacy id {first} (model {model_id})"
            else:  # a model of sfq's own, or imported from another file
                like = f"model {model_id}" + (f" ({duplicate_of})" if duplicate_of else "")
            table.notes.append(f"duplicate id {legacy_id}: same spec as {like}")
        first_legacy.setdefault(model_id, legacy_id)

    gateway.run(conn, gateway.link_parents(_parent_links(parents, mapping, first_legacy, table)))
    return mapping


def _parent_links(
    parents: dict[int, int], mapping: _Mapping, first_legacy: dict[int, int], table: TableReport
) -> dict[int, int]:
    """Second pass, once every legacy model has its new id (a parent may come after its child in the
    file): child model id -> parent model id, for the links that can be kept; the others are noted."""
    mapped, refused = mapping.models, mapping.refused
    links = {}
    for child, parent in parents.items():
        if parent in mapped and mapped[parent] != child:
            links[child] = mapped[parent]
            continue
        if parent in mapped:
            why = "has the same spec"
        elif parent in refused:
            why = "was not imported"
        else:
            why = "is not in the file"
        table.notes.append(
            f"id {first_legacy[child]} (model {child}) imported without its parent: legacy id {parent} {why}"
        )
    for child in list(links):  # two specs mapped onto one model can close a loop: keep the chain a tree
        ancestor, seen = links.get(child), set()
        while ancestor is not None and ancestor != child and ancestor not in seen:
            seen.add(ancestor)
            ancestor = links.get(ancestor)
        if ancestor == child:
            table.notes.append(f"model {child} imported without its parent: the link would make a loop")
            del links[child]
    return links


def _model_params(row: dict[str, Any], file: str) -> dict[str, Any]:
    """The legacy row as import_model's parameters: the request (JSON) and the model's legacy outcome."""
    request: dict[str, Any] = {
        name: row[name] for name in SPEC_FIELDS if row[name] is not None and str(row[name]).strip()
    }
    hyperparameters = _json(row, "hyperparameters", dict)
    if hyperparameters is not None:
        hyperparameters = {k: v for k, v in hyperparameters.items() if k not in RUNTIME_PARAMS}
    request["hyperparameters"] = hyperparameters
    request["features"] = _list(row, "features")
    request["context_symbols"] = _list(row, "context_symbols")
    request["alpha_grid"] = _numbers(row, "alpha_grid")
    request["l1_ratio_grid"] = _numbers(row, "l1_ratio_grid")
    request["regime_configs"] = _json(row, "regime_configs")
    request["execution_lag"] = 0  # the old service measured its target from the signal's close
    status = str(row["status"] or "").strip().lower()
    if status in UNFINISHED:
        status, error = "failed", f"imported from the old service while {status}; resubmit it"
    elif status in STATUSES:
        status, error = STATUSES[status], row["error"]
    else:
        choices = ", ".join([*STATUSES, *UNFINISHED])
        raise _Unmappable(f"status: {row['status']!r} is not one of {choices}")
    metrics = _json(row, "metrics", dict)
    return {
        "request": json.dumps({k: v for k, v in request.items() if v is not None}, default=str),
        "imported_from": f"duckdb:{file}#{row['id']}",
        "status": status,
        "error": error,
        "created_at": row["created_at"],
        "finished_at": row["completed_at"],
        "metrics": None if metrics is None else json.dumps(metrics),
    }


def _reason(rejected: Rejected) -> str:
    message = rejected.message.removeprefix("invalid training request: ")
    return (
        message
        if not rejected.field or message.startswith(rejected.field)
        else f"{rejected.field}: {message}"
    )


def _json(row: dict[str, Any], column: str, kind: type | None = None) -> Any:
    """A JSON column's value (text, or DuckDB's own nested types); None when NULL or blank."""
    value = row[column]
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value, parse_constant=lambda _: None)
        except json.JSONDecodeError as exc:
            raise _Unmappable(f"{column}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if value is not None and kind is not None and not isinstance(value, kind):
        raise _Unmappable(f"{column}: expected a JSON {'object' if kind is dict else 'array'}, got {value!r}")
    return value


def _list(row: dict[str, Any], column: str) -> list | None:
    """A JSON array or a comma list; None (the default) when NULL or empty."""
    value = row[column]
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [item.strip() for item in value.split(",") if item.strip()] or None
    return _json(row, column, list) or None


def _numbers(row: dict[str, Any], column: str) -> list[float] | None:
    items = _list(row, column)
    if items is None:
        return None
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        numbers = [math.nan]
    if not all(map(math.isfinite, numbers)):
        raise _Unmappable(f"{column}: {items!r} is not a list of finite numbers")
    return numbers


def _number(row: dict[str, Any], column: str) -> float | None:
    """A finite number, or None (NULL, NaN or infinite)."""
    value = row[column]
    return float(value) if value is not None and math.isfinite(value) else None


def _import_features(
    conn: psycopg.Connection,
    duck: duckdb.DuckDBPyConnection,
    mapping: _Mapping,
    report: Report,
) -> None:
    """Only a model's own legacy rows: a duplicate's model has its features (or, queued in sfq, will have)."""
    table = report.features_log
    copied, left_out = 0, Counter()
    with gateway.copy_features(conn) as copy:
        for row in gateway.duckdb_features_log(duck):
            table.read += 1
            try:
                model_id = mapping.model_of(row["model_id"])
                importance = _number(row, "importance")
                if importance is None or not str(row["feature_name"] or "").strip():
                    raise _Unmappable("needs a feature_name and a finite importance")
            except _Unmappable as unmappable:
                table.unmappable.append(
                    (f"model_id {row['model_id']} feature {row['feature_name']}", str(unmappable))
                )
                continue
            if row["model_id"] in mapping.duplicates:
                left_out[row["model_id"]] += 1
                continue
            copy.write_row((row["model_id"], model_id, row["feature_name"], importance, row["logged_at"]))
            copied += 1
    table.inserted = gateway.run(conn, gateway.import_features())
    table.skipped = copied - table.inserted + left_out.total()
    table.notes += [
        f"{count} row(s) of duplicate id {legacy_id} left out: "
        f"model {mapping.models[legacy_id]} keeps its own features"
        for legacy_id, count in left_out.items()
    ]


def _import_simulations(
    conn: psycopg.Connection,
    duck: duckdb.DuckDBPyConnection,
    mapping: _Mapping,
    report: Report,
) -> None:
    table = report.simulation_history
    copied = 0
    with gateway.copy_simulations(conn) as copy:
        for row in gateway.duckdb_simulation_history(duck):
            table.read += 1
            try:
                model_id = mapping.model_of(row["model_id"])
                if row["id"] is None or not str(row["strategy"] or "").strip():
                    raise _Unmappable("needs an id and a strategy")
                params = _json(row, "params", dict) or {}
                equity_curve = _json(row, "equity_curve")
            except _Unmappable as unmappable:
                table.unmappable.append((f"id {row['id']}", str(unmappable)))
                continue
            copy.write_row(
                (
                    row["id"], model_id, row["strategy"], json.dumps(params),
                    row["start_date"], row["end_date"], *(_number(row, name) for name in SIMULATION_METRICS),
                    None if equity_curve is None else json.dumps(equity_curve), row["created_at"],
                )
            )  # fmt: skip
            copied += 1
    table.inserted = gateway.run(conn, gateway.import_simulations(report.file))
    table.skipped = copied - table.inserted
