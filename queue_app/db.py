"""The database: named SQL queries from `sql/queries.sql`, and `sfq db upgrade`.

As in Procrastinate, SQL lives in .sql files; a query is called by the name in its `-- name --` header.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import procrastinate
import psycopg
from procrastinate.schema import SchemaManager

from queue_app import gateway
from queue_app.errors import Conflict

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def _sql_text(name: str) -> str:
    return (resources.files("sql") / name).read_text(encoding="utf-8")


def _parse_queries(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def load_queries(name: str) -> dict[str, str]:
    """The named queries of one file in `sql/`."""
    return _parse_queries(_sql_text(name))


QUERIES: dict[str, str] = load_queries("queries.sql")


def connect(url: str, **kwargs) -> psycopg.Connection:
    return gateway.connect(url, **kwargs)


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str
    repeatable: bool  # re-applied whenever its content changes (the generated registry)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    folder = resources.files("sql") / "migrations"
    versioned = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [
        *(
            Migration(f"migrations/{name}", (folder / name).read_text(encoding="utf-8"), False)
            for name in versioned
        ),
        Migration("registry.sql", _sql_text("registry.sql"), True),
    ]


class MigrationError(Conflict):
    """The database's schema cannot be brought to this sfq's: the message says why."""


def upgrade(url: str) -> list[str]:
    """Bring the database to the current schema in one transaction; returns what was applied."""
    applied: list[str] = []
    with connect(url) as conn:
        conn.execute(QUERIES["lock_migrations"])
        conn.execute(QUERIES["create_migrations_table"])
        done = dict(conn.execute(QUERIES["applied_migrations"]).fetchall())
        # Procrastinate ships schema migrations with minor versions; its schema is recorded by minor version.
        procrastinate_name = "procrastinate/" + ".".join(procrastinate.__version__.split(".")[:2])
        has_procrastinate = conn.execute(QUERIES["has_procrastinate_schema"]).fetchone()[0]
        if not has_procrastinate:
            conn.execute(SchemaManager.get_schema())
            applied.append(procrastinate_name)
        recorded = [name for name in done if name.startswith("procrastinate/")]
        if has_procrastinate and recorded and procrastinate_name not in recorded:
            raise MigrationError(
                f"the database has the schema of {recorded[-1]}, this sfq uses {procrastinate_name}: "
                "apply Procrastinate's migrations between them first (see its docs, `procrastinate schema`)"
            )
        if procrastinate_name not in done:
            conn.execute(
                QUERIES["record_migration"], {"name": procrastinate_name, "checksum": "procrastinate"}
            )
        for migration in migrations():
            previous = done.get(migration.name)
            if previous == migration.checksum:
                continue
            if previous is not None and not migration.repeatable:
                raise MigrationError(
                    f"migration {migration.name} changed after it was applied; add a new migration instead"
                )
            conn.execute(migration.sql)
            conn.execute(
                QUERIES["record_migration"], {"name": migration.name, "checksum": migration.checksum}
            )
            applied.append(migration.name)
    return applied


def apply_roles(url: str) -> None:
    """Create or update sfq's database roles and their privileges (sql/roles.sql), in one transaction.
    Run by the owner of sfq's objects: privileges on them are the owner's to grant."""
    with connect(url) as conn:
        conn.execute(_sql_text("roles.sql"))
