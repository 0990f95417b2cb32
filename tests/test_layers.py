"""Who may import what: the modelling code never touches the database, and the core never reaches into
the workers (they depend on it, not the other way round). Read from the source (the AST), so an import
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from queue_app.errors import SfqError
from tests.conftest import ROOT

# The database's clients and sfq's own ways to it: none of them in pure computation. The daemon is the
# side that uses them, so modelling may not import it either.
NOT_IN_MODELLING = (
    "psycopg",
    "psycopg_pool",
    "procrastinate",
    "queue_app.gateway",
    "queue_app.db",
    "workers.daemon",
)


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module a file imports, wherever the import stands; `from a import b`
    counts as both a and a.b (b may be a module), and importlib.import_module("x") / __import__("x") with
    a literal name as x."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def offences(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported(path):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_modelling_never_imports_the_database():
    assert offences("workers/modelling", NOT_IN_MODELLING) == []


def test_the_core_never_imports_the_workers():
    assert offences("queue_app", ("workers",)) == []


def test_importing_all_of_modelling_loads_no_database_client():
    """The same, transitively: what modelling's own imports import."""
    modules = sorted(module_name(path) for path in (ROOT / "workers" / "modelling").rglob("*.py"))
    program = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"forbidden = {NOT_IN_MODELLING!r}\n"
        "print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_every_exception_of_the_workers_is_an_sfq_error():
    """One error tree: what the workers raise derives from queue_app.errors' root."""
    own = []
    for path in sorted((ROOT / "workers").rglob("*.py")):
        module = importlib.import_module(module_name(path))
        own += [
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == module.__name__
        ]
    assert len(own) >= 5  # TrainingError, TooFewRows, the backtest's, ModelFailed, Requeue
    assert [error.__qualname__ for error in own if not issubclass(error, SfqError)] == []


def test_the_checks_see_an_import_inside_a_function(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text(
        "def f():\n    import psycopg\n    from queue_app import gateway\n"
        "    importlib.import_module('workers.daemon.runtime')\n"
    )
    assert [name for _, name in imported(source)] == [
        "psycopg",
        "queue_app",
        "queue_app.gateway",
        "workers.daemon.runtime",
    ]
