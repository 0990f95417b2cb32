"""The database's schema: `sfq db upgrade` (`upgrade`) and `sfq db roles` (`apply_roles`). Its bookkeeping
queries go through queue_app.gateway like every other; the schema's files are run here, as scripts.

`upgrade()` brings a database to the current schema in one transaction (one upgrade at a time), in three
steps, each recorded in `sfq_migrations`:

1. **Procrastinate's schema.** A database without it gets the installed package's `schema.sql`. A database
   with an older one gets the package's own migrations (`procrastinate/sql/migrations/`, those whose
   version is above the recorded one and not above the installed one, `pre` and `post` alike: sfq upgrades
   offline, in one transaction); one with a newer one is refused. Recorded as `procrastinate/X.Y.Z` (a
   `procrastinate/X.Y` recorded by an older sfq reads as X.Y.0).
2. **sfq's tables.** A database without sfq's tables is built from `sql/schema/tables.sql` (the current
   tables, types, indexes and comments) and every file of `sql/migrations/` is recorded as applied. An
   existing database gets its pending migrations, once each, in order; a migration that changed after it
   was applied is refused.
3. **sfq's functions, triggers and function privileges**: the repeatable files of `sql/schema/`, in the
   order of `SCHEMA_FILES` (the generated registry first: SQL functions are checked when they are created),
   each a set of `CREATE OR REPLACE` definitions. They are applied after the tables whenever anything
   was applied above or one of them changed, all of them, with `search_path` set to sfq's schema then
   `pg_temp`; a SECURITY DEFINER function keeps it (`SET search_path FROM CURRENT` in its definition).

So the current definition of every function is in one place, `sql/schema/`, and is edited there. A
migration holds only what cannot be repeated: tables, columns, indexes (made in `tables.sql` too, columns
in the same order), data changes, and the drop of a function that is retired or whose arguments or result
change (its new definition goes to `sql/schema/`). Migrations 0001-0008 predate this and stay as they
were (their checksums are recorded). tests/test_schema.py compares a fresh database with one upgraded
through every migration.
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

# sql/schema/'s repeatable files, in the order they are applied (tables.sql, applied to a new database only,
# comes before them).
SCHEMA_FILES = (
    "registry.sql",  # generated (workers/modelling/contract.py): the registries' rows, the shared vocabulary
    "bars.sql",  # bars revisions (what a fingerprint includes)
    "requests.sql",  # validation, canonical form, fingerprint; the JSON way in; training_requests' triggers
    "models.sql",  # a model's insertion (the one INSERT INTO models) and its attempt log
    "queue.sql",  # Procrastinate: job rows, deferral, rescue, pruning
    "counts.sql",  # the counters users' counts come from (models, jobs, training times)
    "forecasts.sql",
    "simulations.sql",  # backtests
    "strategies.sql",  # named strategies, their aliases; forecasts on every new bar
    "sweeps.sql",
    "studies.sql",  # searches with Optuna's samplers and pruners, advanced by the workers
    "operations.sql",  # batch, retrain, evolve, cancel
    "retrains.sql",  # retrain policies per strategy alias, champion/challenger
    "artifacts.sql",  # model files' retention: eviction, and the collection of unlinked blobs
    "security.sql",  # no function executable by PUBLIC
)
TABLES_FILE = "tables.sql"
PROCRASTINATE = "procrastinate/"


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str
    repeatable: bool  # sql/schema/'s: re-applied whenever one of them changes or a migration ran

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """sql/migrations/, in order: applied once each to an existing database."""
    folder = resources.files("sql") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [Migration(f"migrations/{n}", (folder / n).read_text(encoding="utf-8"), False) for n in names]


def schema_files() -> list[Migration]:
    """sql/schema/'s repeatable files, in the order they are applied."""
    folder = resources.files("sql") / "schema"
    present = {p.name for p in folder.iterdir() if p.name.endswith(".sql")}
    unlisted = present - {*SCHEMA_FILES, TABLES_FILE}
    if unlisted:  # a file that would never be applied
        raise MigrationError(f"sql/schema/ has {', '.join(sorted(unlisted))}; SCHEMA_FILES does not list it")
    return [Migration(f"schema/{n}", (folder / n).read_text(encoding="utf-8"), True) for n in SCHEMA_FILES]


class MigrationError(Conflict):
    """The database's schema cannot be brought to this sfq's: the message says why."""


Version = tuple[int, int, int]
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> Version:
    """3.10.0 from "3.10.0", "3.10" (as sfq recorded it before) or "03.10.00" (a migration's prefix)."""
    match = _VERSION.match(text)
    if not match:
        raise MigrationError(f"not a version: {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _dotted(version: Version) -> str:
    return ".".join(map(str, version))


def procrastinate_migrations(after: Version, up_to: Version) -> list[Migration]:
    """The installed Procrastinate's migrations above `after` and up to `up_to`, in order."""
    folder = resources.files("procrastinate") / "sql" / "migrations"
    names = sorted(p.name for p in folder.iterdir() if re.match(r"^\d+\.\d+\.\d+_.*\.sql$", p.name))
    return [
        Migration(f"{PROCRASTINATE}migrations/{name}", (folder / name).read_text(encoding="utf-8"), False)
        for name in names
        if after < parse_version(name) <= up_to
    ]


def _upgrade_procrastinate(conn: psycopg.Connection, done: dict[str, str]) -> list[str]:
    """Procrastinate's schema installed, or migrated from the recorded version to the installed one."""
    installed = parse_version(procrastinate.__version__)
    name = PROCRASTINATE + _dotted(installed)
    recorded = max(
        (parse_version(n.removeprefix(PROCRASTINATE)) for n in done if n.startswith(PROCRASTINATE)),
        default=installed,  # a schema without a record is taken as the installed version's, as it always was
    )
    applied: list[str] = []
    if not gateway.run(conn, gateway.has_procrastinate_schema()):
        gateway.execute_script(conn, SchemaManager.get_schema())
        applied.append(name)
    elif recorded > installed:
        raise MigrationError(
            f"the database has the schema of procrastinate {_dotted(recorded)}, newer than the installed "
            f"procrastinate {_dotted(installed)}: upgrade sfq (and its procrastinate) instead"
        )
    elif recorded < installed:
        for migration in procrastinate_migrations(recorded, installed):
            gateway.execute_script(conn, migration.sql)
            applied.append(migration.name)
        applied.append(name)
    if name not in done:  # one record, the version the schema is at now
        gateway.run(conn, gateway.forget_procrastinate_versions())
        gateway.run(conn, gateway.record_migration(name, "procrastinate"))
    return applied


def _record(conn: psycopg.Connection, migration: Migration) -> None:
    gateway.run(conn, gateway.record_migration(migration.name, migration.checksum))


def upgrade(url: str) -> list[str]:
    """Bring the database to the current schema in one transaction; returns what was applied (or, for a
    new database's migrations, recorded as applied)."""
    applied: list[str] = []
    with gateway.connect(url) as conn:
        gateway.run(conn, gateway.lock_migrations())
        gateway.run(conn, gateway.create_migrations_table())
        done = gateway.run(conn, gateway.applied_migrations())
        applied += _upgrade_procrastinate(conn, done)

        versioned = migrations()
        if not any(name.startswith("migrations/") for name in done):
            if gateway.run(conn, gateway.has_sfq_tables()):
                raise MigrationError("the database has sfq's tables but no record of their migrations")
            gateway.execute_script(conn, gateway.sql_text(f"schema/{TABLES_FILE}"))
            applied.append(f"schema/{TABLES_FILE}")
            for migration in versioned:
                _record(conn, migration)
                applied.append(migration.name)
        else:
            for migration in versioned:
                previous = done.get(migration.name)
                if previous == migration.checksum:
                    continue
                if previous is not None:
                    raise MigrationError(
                        f"migration {migration.name} changed after it was applied; "
                        "add a new migration instead"
                    )
                gateway.execute_script(conn, migration.sql)
                _record(conn, migration)
                applied.append(migration.name)

        repeatable = schema_files()
        if applied or any(done.get(m.name) != m.checksum for m in repeatable):
            # Objects are created in sfq's schema (that of its tables), and SECURITY DEFINER functions keep
            # this search_path (SET search_path FROM CURRENT); until the end of this transaction only.
            gateway.run(conn, gateway.set_schema_search_path())
            for migration in repeatable:
                gateway.execute_script(conn, migration.sql)
                _record(conn, migration)
                applied.append(migration.name)
    return applied


def apply_roles(url: str) -> None:
    """Create or update sfq's database roles and their privileges (sql/roles.sql), in one transaction.
    Run by the owner of sfq's objects: privileges on them are the owner's to grant."""
    with gateway.connect(url) as conn:
        gateway.execute_script(conn, gateway.sql_text("roles.sql"))
