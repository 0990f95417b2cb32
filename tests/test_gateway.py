"""The gateway is the one door to the database: every named query has a description and a function in
queue_app/gateway.py, and no other module of the core or the workers runs SQL. Database errors become
sfq's errors there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from queue_app import gateway
from queue_app.errors import Conflict, NoSchema, NotFound, Rejected, Unavailable
from queue_app.vocabulary import STATUSES

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "queue_app" / "gateway.py"
# The schema runner applies migration files and sql/schema as scripts (queue_app/db.py), beside the gateway.
MAY_RUN_SQL = {GATEWAY, ROOT / "queue_app" / "db.py"}
SQL_CALLS = {"execute", "executemany", "copy", "fetchone", "fetchall", "cursor"}


def _strings(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}


def test_every_named_query_has_a_description_and_a_gateway_function():
    named = gateway.QUERIES
    assert len(named) > 60
    undescribed = sorted(name for name, query in named.items() if not query.description)
    assert undescribed == [], "named queries need a `-- one-line description` after their header"
    unused = sorted(set(named) - _strings(GATEWAY))
    assert unused == [], "named queries no function of queue_app/gateway.py runs"


def _sql_calls(path: Path, root: Path = ROOT) -> list[str]:
    """Calls that run SQL, and uses of the named queries, as `file:line what`, in line order."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr in SQL_CALLS:
            found.append((node.lineno, f".{node.func.attr}()"))
        if (isinstance(node, ast.Name) and node.id == "QUERIES") or (
            isinstance(node, ast.ImportFrom) and any(alias.name == "QUERIES" for alias in node.names)
        ):
            found.append((node.lineno, "QUERIES"))
    return [f"{path.relative_to(root)}:{line} {what}" for line, what in sorted(found)]


def test_only_the_gateway_runs_sql():
    """In the core and the workers (the benchmarks' plain-SQL clients are what they measure)."""
    modules = sorted(
        p
        for package in ("queue_app", "workers")
        for p in (ROOT / package).rglob("*.py")
        if p not in MAY_RUN_SQL
    )
    assert len(modules) > 50
    assert [call for path in modules for call in _sql_calls(path)] == []


def test_the_check_finds_sql_run_elsewhere(tmp_path):
    """The scan above can fail: a module that executes SQL itself is reported."""
    rogue = tmp_path / "rogue.py"
    rogue.write_text(
        "from queue_app.gateway import QUERIES\n\n\ndef f(conn):\n    return conn.execute('SELECT 1')\n"
    )
    assert _sql_calls(rogue, tmp_path) == ["rogue.py:1 QUERIES", "rogue.py:5 .execute()"]


def test_statuses_are_the_database_enum(conn):
    labels = conn.execute("SELECT enum_range(NULL::sfq_model_status)::text[]").fetchone()[0]
    assert tuple(labels) == STATUSES


@pytest.mark.parametrize(
    ("statement", "error", "field"),
    [
        ('SELECT * FROM sfq_submit(\'{"symbol": "AAPL", "horizon": 0}\')', Rejected, "horizon"),
        ("SELECT * FROM sfq_cancel_model(9223372036854775807)", NotFound, None),
        ("SELECT * FROM no_such_table", NoSchema, None),
    ],
)
def test_database_errors_become_sfq_errors(conn, statement, error, field):
    with pytest.raises(error) as raised:
        gateway.client_statement(conn, statement)
    assert getattr(raised.value, "field", None) == field


def test_a_finished_model_cannot_be_cancelled_twice(clean):
    submission = gateway.run(clean, gateway.submit({"symbol": "AAPL"}, "test"))
    gateway.run(clean, gateway.cancel_model(submission.model_id))
    with pytest.raises(Conflict, match="already cancelled"):
        gateway.run(clean, gateway.cancel_model(submission.model_id))


def test_an_unreachable_database_is_unavailable():
    with pytest.raises(Unavailable, match="cannot reach the database"):
        gateway.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
