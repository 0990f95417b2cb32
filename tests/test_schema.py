"""`sfq db upgrade` builds one schema whichever way a database came: a new database, from
sql/schema/tables.sql and sql/schema/'s repeatable files, has the catalog of a database upgraded through
every migration since 0001, one at a time, with rows written between them by the functions of that time,
and of one made with an older Procrastinate, whose own migrations the upgrade applies. Compared: tables
and columns, constraints, indexes, types, functions (with their bodies, SECURITY DEFINER and settings),
triggers, views, sequences, comments and privileges (after `sfq db roles`)."""

from __future__ import annotations

import difflib
import hashlib
import json
import zipfile
from dataclasses import dataclass

import procrastinate
import psycopg
import pytest
from procrastinate.schema import SchemaManager
from psycopg.types.json import Jsonb

from queue_app import bars, db, gateway
from tests.conftest import ROOT
from workers.modelling import contract
from workers.modelling.algorithms import ALGORITHMS
from workers.modelling.backtest import STRATEGIES
from workers.modelling.features import FEATURES
from workers.modelling.regimes import REGIMES

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}

# ---------------------------------------------------------------------------------------------------------
# The catalog, as readable lines per section (each sorted, so that creation order does not matter).

SFQ = "%(ns)s::regnamespace"  # sfq's schema
CATALOG_QUERIES = {
    "tables": f"""
        SELECT format('%s (%s%s)', c.oid::regclass, c.relkind,
                      coalesce(', ' || array_to_string(c.reloptions, ','), ''))
          FROM pg_class c WHERE c.relnamespace = {SFQ} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
    "columns": f"""
        SELECT format('%s.%s %s: %s%s%s%s%s', c.oid::regclass,
                      lpad((row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::text, 2, '0'),
                      a.attname, format_type(a.atttypid, a.atttypmod),
                      CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                      ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
                      CASE a.attidentity WHEN 'a' THEN ' IDENTITY ALWAYS' WHEN 'd' THEN ' IDENTITY BY DEFAULT'
                                         ELSE '' END,
                      CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END
                      || CASE WHEN a.attstorage <> t.typstorage THEN ' STORAGE ' || a.attstorage::text
                              ELSE '' END
                      || CASE WHEN a.attcompression <> '' THEN ' COMPRESSION ' || a.attcompression::text
                              ELSE '' END)
          FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace = {SFQ} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')""",
    "constraints": f"""
        SELECT format('%s %s: %s', coalesce(r.conrelid::regclass::text, r.contypid::regtype::text),
                      r.conname, pg_get_constraintdef(r.oid))
          FROM pg_constraint r WHERE r.connamespace = {SFQ}""",
    "indexes": f"""
        SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = {SFQ}""",
    "types": f"""
        SELECT format('%s (%s)%s', t.oid::regtype, t.typtype,
                      coalesce(': ' || (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
                                          FROM pg_enum e WHERE e.enumtypid = t.oid), ''))
          FROM pg_type t
         WHERE t.typnamespace = {SFQ} AND t.typelem = 0 AND t.typtype IN ('e', 'c', 'd', 'r')
           AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')""",
    "functions": f"""
        SELECT format(E'%s(%s) -> %s%s\\n  language %s, volatility %s, parallel %s%s%s%s%s, cost %s, rows %s'
                      '\\n  arguments %s\\n  security definer: %s\\n  config: %s\\n  body:\\n%s',
                      p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
                      CASE p.prokind WHEN 'p' THEN ' (procedure)' WHEN 'a' THEN ' (aggregate)' ELSE '' END,
                      l.lanname,
                      CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
                      CASE p.proparallel WHEN 's' THEN 'safe' WHEN 'r' THEN 'restricted' ELSE 'unsafe' END,
                      CASE WHEN p.proisstrict THEN ', strict' ELSE '' END,
                      CASE WHEN p.proretset THEN ', set-returning' ELSE '' END,
                      CASE WHEN p.proleakproof THEN ', leakproof' ELSE '' END,
                      CASE WHEN p.prosupport::oid <> 0 THEN ', support ' || p.prosupport::regproc ELSE '' END,
                      p.procost, p.prorows, pg_get_function_arguments(p.oid), p.prosecdef::text, p.proconfig,
                      p.prosrc)
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = {SFQ}""",
    "triggers": f"""
        SELECT pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'O' THEN '' ELSE ' ' || t.tgenabled::text END
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = {SFQ} AND NOT t.tgisinternal""",
    "views": f"""
        SELECT format('%s: %s', c.oid::regclass, pg_get_viewdef(c.oid)) FROM pg_class c
         WHERE c.relnamespace = {SFQ} AND c.relkind IN ('v', 'm')""",
    "sequences": f"""
        SELECT format('%s %s start %s increment %s min %s max %s cache %s%s%s', c.oid::regclass,
                      s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
                      CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END,
                      (SELECT format(' owned by %s.%s (%s)', d.refobjid::regclass, a.attname, d.deptype)
                         FROM pg_depend d
                         JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype IN ('a', 'i')))
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = {SFQ}""",
    "comments": f"""
        SELECT format('%s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
          FROM pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) o
         WHERE o.schema = %(ns)s OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = {SFQ})""",
    "grants": f"""
        WITH objects (kind, name, acl) AS (
            SELECT 'table', c.oid::regclass::text, c.relacl FROM pg_class c
             WHERE c.relnamespace = {SFQ} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            UNION ALL
            SELECT 'column', format('%s.%s', c.oid::regclass, a.attname), a.attacl
              FROM pg_class c
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE c.relnamespace = {SFQ}
            UNION ALL
            SELECT 'function', p.oid::regprocedure::text, p.proacl FROM pg_proc p WHERE p.pronamespace = {SFQ}
            UNION ALL
            SELECT 'type', t.oid::regtype::text, t.typacl FROM pg_type t WHERE t.typnamespace = {SFQ}
            UNION ALL
            SELECT 'schema', n.nspname, n.nspacl FROM pg_namespace n WHERE n.oid = {SFQ}
        )
        SELECT format('%s %s: %s %s%s (by %s)', o.kind, o.name,
                      CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END,
                      x.privilege_type, CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                      x.grantor::regrole)
          FROM objects o, aclexplode(o.acl) x WHERE o.acl IS NOT NULL""",
}


@dataclass
class Catalog:
    sections: dict[str, list[str]]

    def summary(self) -> str:
        count = {name: len(lines) for name, lines in self.sections.items()}
        return (
            f"{count['tables']} tables, {count['columns']} columns, {count['constraints']} constraints, "
            f"{count['indexes']} indexes, {count['types']} types, {count['functions']} functions, "
            f"{count['triggers']} triggers, {count['views']} views, {count['sequences']} sequences, "
            f"{count['comments']} comments, {count['grants']} grants"
        )


def _with_literal_percents(query: str) -> str:
    """format()'s % signs escaped for psycopg, the schema's placeholder kept."""
    return query.replace("%", "%%").replace("%%(ns)s", "%(ns)s")


def catalog(conn: psycopg.Connection) -> Catalog:
    """The catalog of sfq's schema (that of `models`, where Procrastinate's objects are too)."""
    ns = conn.execute(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'models'::regclass"
    ).fetchone()[0]
    return Catalog(
        {
            name: sorted(row[0] for row in conn.execute(_with_literal_percents(query), {"ns": ns}))
            for name, query in CATALOG_QUERIES.items()
        }
    )


def differences(expected: Catalog, actual: Catalog, labels: tuple[str, str]) -> str:
    """A unified diff per section that differs (functions' bodies line by line); empty when identical."""
    report = []
    for section, lines in expected.sections.items():
        if lines == actual.sections[section]:
            continue
        diff = difflib.unified_diff(
            "\n".join(lines).splitlines(), "\n".join(actual.sections[section]).splitlines(),
            f"{labels[0]}: {section}", f"{labels[1]}: {section}", lineterm="", n=2,
        )  # fmt: skip
        report.append("\n".join(diff))
    return "\n".join(report)


# ---------------------------------------------------------------------------------------------------------
# A database upgraded through every migration, with rows written between them, as sfq's of that time did.


def registry_rows() -> dict[str, tuple[str, list[tuple]]]:
    """What sql/registry.sql wrote, per registry table: the INSERT and its rows."""
    regimes = {n: contract.regime_contract(r) for n, r in REGIMES.items()}
    strategies = {n: contract.strategy_contract(s) for n, s in STRATEGIES.items()}
    return {
        "sfq_algorithms": (
            "INSERT INTO sfq_algorithms (name, hyperparameters) VALUES (%s, %s)",
            [(n, Jsonb(contract.hyperparameter_contract(a))) for n, a in ALGORITHMS.items()],
        ),
        "sfq_features": (
            "INSERT INTO sfq_features (name, description, is_default, position) VALUES (%s, %s, %s, %s)",
            [(f.name, f.description, f.default, i) for i, f in enumerate(FEATURES.values(), 1)],
        ),
        "sfq_regimes": (
            "INSERT INTO sfq_regimes (name, description, parameters) VALUES (%s, %s, %s)",
            [(n, c["description"], Jsonb(c["parameters"])) for n, c in regimes.items()],
        ),
        "sfq_strategies": (
            "INSERT INTO sfq_strategies (name, description, parameters) VALUES (%s, %s, %s)",
            [(n, c["description"], Jsonb(c["parameters"])) for n, c in strategies.items()],
        ),
    }


def load_registry(conn: psycopg.Connection, *tables: str) -> None:
    rows = registry_rows()
    with conn.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DELETE FROM {table}")
            cursor.executemany(*rows[table])


def apply_migration(conn: psycopg.Connection, name: str) -> None:
    """One migration, recorded as `sfq db upgrade` recorded it."""
    (migration,) = [m for m in db.migrations() if m.name == f"migrations/{name}"]
    conn.execute(migration.sql)
    gateway.run(conn, gateway.record_migration(migration.name, migration.checksum))


def submit(conn: psycopg.Connection, request: dict) -> int:
    return conn.execute("SELECT model_id FROM sfq_submit(%s)", (Jsonb(request),)).fetchone()[0]


def job_of(conn: psycopg.Connection, model_id: int) -> int:
    return conn.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()[0]


def build_through_every_migration(url: str, procrastinate_schema: str, procrastinate_record: str) -> None:
    """Migrations 0001-0008 one at a time on Procrastinate's schema (as recorded by an older sfq), each
    followed by what a database of that time saw: registries, bars, requests through the trigger of that
    time, a worker's attempt, a rescue, operations, an imported model, a sweep, a backtest, progress."""
    with psycopg.connect(url, autocommit=True) as conn:
        gateway.run(conn, gateway.create_migrations_table())
        conn.execute(procrastinate_schema)
        gateway.run(conn, gateway.record_migration(procrastinate_record, "procrastinate"))

        apply_migration(conn, "0001_foundation.sql")
        load_registry(conn, "sfq_algorithms", "sfq_features")
        gateway.run(conn, gateway.record_migration("registry.sql", "of that time"))
        for symbol, rows in bars.sample_bars():
            if symbol in ("AAPL", "MSFT"):
                bars.load(conn, symbol, "1d", rows)
        conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, train_window, test_window, hyperparameters)"
            " VALUES ('AAPL', 'Ridge', 300, 60, '{\"alpha\": 1}'), ('MSFT', 'Ridge', 300, 60, '{}'),"
            " ('aapl ', 'Ridge', 300, 60, '{\"alpha\": 1.0}')"
        )
        first = submit(conn, {"symbol": "AAPL", "horizon": 2, **FAST})

        apply_migration(conn, "0002_resilience.sql")
        conn.execute(  # a worker's attempt, completed
            "UPDATE models SET status = 'running', attempts = 1, started_at = now(), worker_host = 'old',"
            " worker_pid = 1 WHERE id = 1"
        )
        conn.execute(
            "UPDATE models SET status = 'completed', finished_at = now(), metrics = '{}' WHERE id = 1"
        )
        conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (job_of(conn, first),))
        conn.execute("SELECT * FROM sfq_rescue_stalled_jobs(0, 3)")  # the 0001 sfq_defer_training's rescue

        apply_migration(conn, "0003_full_service.sql")
        load_registry(conn, "sfq_regimes")
        submit(conn, {"symbol": "MSFT", "priority": 5, "regime_configs": [{"kind": "trend"}], **FAST})
        conn.execute("SELECT sfq_retrain(1, true)")
        conn.execute("""SELECT sfq_evolve(1, '{"horizon": 3}')""")
        conn.execute("SELECT sfq_submit_batch(%s)", (Jsonb({"symbol": "MSFT", "horizon": 4, **FAST}),))
        conn.execute("INSERT INTO model_artifacts VALUES (1, 'skops', 'x', 1, 'x')")
        conn.execute("SELECT sfq_request_forecast(1)")
        conn.execute("SELECT sfq_cancel_model(%s)", (first,))

        apply_migration(conn, "0004_legacy_import.sql")
        conn.execute(  # the DuckDB import of that time: a failed legacy model with model 1's fingerprint
            "INSERT INTO models (fingerprint, spec, symbol, timeframe, target_col, target_transform, horizon,"
            " algorithm, hyperparameters, features, train_window, test_window, data_end, cv_folds,"
            " cv_strategy, context_symbols, alpha_grid, l1_ratio_grid, regime_configs, run, status, error,"
            " imported_from)"
            " SELECT fingerprint, spec, symbol, timeframe, target_col, target_transform, horizon, algorithm,"
            " hyperparameters, features, train_window, test_window, data_end, cv_folds, cv_strategy,"
            " context_symbols, alpha_grid, l1_ratio_grid, regime_configs, run, 'failed', 'legacy',"
            " 'duckdb:old.duckdb#1' FROM models WHERE id = 1"
        )
        conn.execute(  # its spec as the old service wrote it (horizon 1.0): its columns do not give it back
            "UPDATE models m SET spec = s.spec,"
            "       fingerprint = encode(sha256(convert_to(s.spec::text, 'UTF8')), 'hex')"
            " FROM (SELECT id, spec || jsonb_build_object('horizon', horizon::numeric(4, 1)) AS spec"
            "       FROM models WHERE imported_from = 'duckdb:old.duckdb#1') s WHERE m.id = s.id"
        )

        apply_migration(conn, "0005_simulations_sweeps.sql")
        load_registry(conn, "sfq_strategies")
        conn.execute("SELECT sfq_request_simulation(1)")
        conn.execute("""UPDATE simulation_history SET status = 'completed', metrics = '{"sharpe": -2.2}'""")
        conn.execute(
            "SELECT sfq_submit_sweep(%s, %s)",
            (
                Jsonb({"symbol": "AAPL", **FAST}),
                Jsonb({"horizon": [1, 2, 3], "hyperparameters.alpha": [1, 2]}),
            ),
        )

        apply_migration(conn, "0006_least_privilege.sql")
        submit(conn, {"symbol": "AAPL", "cv_strategy": "purged", **FAST})

        apply_migration(conn, "0007_progress.sql")
        conn.execute("""UPDATE models SET progress = '{"phase": "done"}' WHERE id = 1""")
        conn.execute("INSERT INTO sfq_workers (worker_id, host, pid, instance) VALUES (1, 'old', 1, 1)")

        apply_migration(conn, "0008_faster_enqueue.sql")
        conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, train_window, test_window, horizon, priority)"
            " SELECT 'MSFT', 'Ridge', 300, 60, h, h FROM generate_series(5, 9) h"
        )


def fingerprints_recomputed(conn: psycopg.Connection) -> list[tuple]:
    """Each request-made model whose spec, canonicalised again today, has another fingerprint."""
    return conn.execute(
        "SELECT m.id, m.fingerprint, r.fingerprint FROM models m,"
        " sfq_canonical_request(jsonb_populate_record(NULL::training_requests,"
        "                       sfq_request_defaults() || sfq_model_request(m)), false) r"
        " WHERE m.imported_from IS NULL AND r.fingerprint <> m.fingerprint"
    ).fetchall()


def write_after_the_upgrade(conn: psycopg.Connection) -> None:
    """Today's functions on the upgraded rows: a request, a duplicate, a sweep, a rescue."""
    new = submit(conn, {"symbol": "MSFT", "horizon": 11, **FAST})
    assert submit(conn, {"symbol": "msft", "horizon": 11, **FAST}) == new
    conn.execute(
        "SELECT sfq_submit_sweep(%s, %s)",
        (Jsonb({"symbol": "AAPL", **FAST}), Jsonb({"horizon": [1, 2, 12], "hyperparameters.alpha": [1, 2]})),
    )
    conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (job_of(conn, new),))
    rescued = conn.execute("SELECT outcome FROM sfq_rescue_stalled_jobs(0, 3) WHERE model_id = %s", (new,))
    assert rescued.fetchall() == [("rescued",)]


@dataclass
class Databases:
    fresh: str
    upgraded: str
    applied: list[str]


@pytest.fixture(scope="module")
def databases(make_database) -> Databases:
    fresh = make_database("sfq_fresh")
    db.upgrade(fresh)
    upgraded = make_database("sfq_upgraded")
    procrastinate_record = "procrastinate/" + ".".join(
        procrastinate.__version__.split(".")[:2]
    )  # an older sfq's
    build_through_every_migration(upgraded, SchemaManager.get_schema(), procrastinate_record)
    applied = db.upgrade(upgraded)
    for url in (fresh, upgraded):
        db.apply_roles(url)
    return Databases(fresh, upgraded, applied)


def test_an_existing_database_gets_its_pending_migration_then_the_schema_files(databases):
    assert databases.applied == [
        "migrations/0009_schema_files.sql",
        "migrations/0010_trade_what_was_predicted.sql",
        "migrations/0011_walk_forward.sql",
        "migrations/0012_lockbox.sql",
        "migrations/0013_bar_revisions.sql",
        "migrations/0014_symbol_calendars.sql",
        "migrations/0015_studies.sql",
        "migrations/0016_strategy_registry.sql",
        "migrations/0017_read_paths.sql",
        "migrations/0018_retrain_policies.sql",
        "migrations/0019_trace_context.sql",
        "migrations/0020_artifact_store.sql",
        "migrations/0021_enqueue_path.sql",
        "migrations/0023_prune_in_batches.sql",
        "migrations/0025_compact_model_rows.sql",
        "migrations/0026_wake_only_sleepers.sql",
        "migrations/0027_one_round_a_fleet.sql",
        "migrations/0028_wake_one_sleeper.sql",
        "migrations/0029_fetch_probes_locks_by_index.sql",
        "migrations/0031_spec_from_columns.sql",
        "migrations/0032_fleet_size.sql",
        "migrations/0033_symbol_algorithm_index.sql",
        "migrations/0034_bar_revisions_in_the_pin.sql",
        "migrations/0035_training_jobs_without_deferred_events.sql",
        *(f"schema/{name}" for name in db.SCHEMA_FILES),
    ]
    assert db.upgrade(databases.upgraded) == []  # current: nothing to do
    with psycopg.connect(databases.upgraded, autocommit=True) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sfq_migrations")}
        assert "registry.sql" not in names and "schema/registry.sql" in names
        # procrastinate/3.10, as an older sfq recorded it, read as 3.10.0 (nothing to migrate) and renamed.
        assert {n for n in names if n.startswith("procrastinate/")} == {
            f"procrastinate/{procrastinate.__version__}"
        }
        assert fingerprints_recomputed(conn) == []  # same fingerprints for the models made before
        # The backtest computed before 0010 keeps its metrics, marked legacy; asked again, it is a new one.
        legacy = "SELECT id, convention, metrics->>'sharpe' FROM simulation_history WHERE model_id = 1"
        ((old, convention, sharpe),) = conn.execute(legacy).fetchall()
        assert (convention, sharpe) == ("legacy", "-2.2")
        again = conn.execute("SELECT id, convention, status FROM sfq_request_simulation(1)").fetchone()
        assert again[0] != old and again[1:] == ("label", "queued")
        first_after = conn.execute("SELECT max(id) + 1 FROM models").fetchone()[0]
        write_after_the_upgrade(conn)
        unqueued = conn.execute(
            "SELECT m.id FROM models m LEFT JOIN procrastinate_jobs j ON j.id = m.job_id"
            " WHERE m.status = 'queued' AND (j.id IS NULL OR j.status <> 'todo'"
            "   OR (j.queue_name, j.task_name, j.lock, j.args, j.priority) <> ('training', 'train_model',"
            "       'model:' || m.id, jsonb_build_object('model_id', m.id), m.priority))"
        )
        assert unqueued.fetchall() == []  # every queued model has its job, old or new, the same way
        # 0031: a model's row keeps its columns and the rest of its spec, or the whole spec where the columns
        # would not give it back byte for byte; either reads back as the spec hashed into its fingerprint.
        specs = conn.execute(
            "SELECT m.spec_extra ? 'symbol', m.id < %s, count(*), count(*) FILTER"
            " (WHERE encode(sha256(convert_to(m.spec::text, 'UTF8')), 'hex') = fingerprint)"
            " FROM models m GROUP BY 1, 2 ORDER BY 1, 2",
            (first_after,),
        ).fetchall()
        assert [(whole, before, n == hashed) for whole, before, n, hashed in specs] == [
            (False, False, True),  # made after the upgrade
            (False, True, True),  # made before and compacted by 0031
            (True, True, True),  # the import's, whose columns do not give its spec back: kept whole
        ]
        # DROP COLUMN only hides a column: 0031 rewrites the table, so no row keeps the spec's bytes.
        conn.execute("CREATE EXTENSION pageinspect")
        kept = conn.execute(
            "SELECT count(*) FILTER (WHERE i.t_attrs[3] IS NOT NULL), count(*)"
            " FROM generate_series(0, pg_relation_size('models') / 8192 - 1) AS page,"
            "      heap_page_item_attrs(get_raw_page('models', page::integer), 'models'::regclass) AS i"
            " WHERE i.lp_len > 0 AND i.t_attrs IS NOT NULL"
        ).fetchone()
        conn.execute("DROP EXTENSION pageinspect")
        dropped = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'models'::regclass AND attnum = 3"
        )
        assert dropped.fetchone()[0] == "........pg.dropped.3........" and kept[0] == 0 and kept[1] > 10


def test_the_upgrade_moves_existing_model_files_into_blobs(databases):
    """0020: the file written as a bytea before it (model 1's, b'x', recorded SHA-256 'x') is a blob keyed
    by its bytes' SHA-256, one chunk, linked to its model, which keeps the recorded SHA-256 (so reading it
    still tells the bytes are not the recorded ones)."""
    with psycopg.connect(databases.upgraded, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.sha256, a.blob, b.size, b.chunks, b.location, c.n, c.bytes FROM model_artifacts a"
            " JOIN blobs b ON b.sha256 = a.blob JOIN blob_chunks c ON c.sha256 = b.sha256"
            " WHERE a.model_id = 1"
        ).fetchall()
    assert row == [("x", hashlib.sha256(b"x").hexdigest(), 1, 1, None, 0, b"x")]


def test_a_new_database_is_built_from_the_schema_files_and_records_every_migration(databases):
    with psycopg.connect(databases.fresh, autocommit=True) as conn:
        recorded = dict(conn.execute("SELECT name, checksum FROM sfq_migrations"))
    for migration in [*db.migrations(), *db.schema_files()]:
        assert recorded[migration.name] == migration.checksum, migration.name
    assert db.upgrade(databases.fresh) == []


def test_a_new_database_and_an_upgraded_one_have_the_same_schema(databases, capsys):
    with psycopg.connect(databases.fresh) as fresh, psycopg.connect(databases.upgraded) as upgraded:
        expected, actual = catalog(fresh), catalog(upgraded)
    report = differences(expected, actual, ("new database", "upgraded database"))
    assert not report, "the schema of a new database differs from an upgraded one's:\n" + report
    with capsys.disabled():
        print(f"\nschema equivalence: {expected.summary()}: identical")


def test_the_comparison_sees_a_left_over_function_a_missing_index_and_a_changed_default(databases):
    with psycopg.connect(databases.fresh) as conn:  # in a transaction, rolled back
        expected = catalog(conn)
        conn.execute("CREATE FUNCTION sfq_left_behind() RETURNS integer LANGUAGE sql AS 'SELECT 1'")
        conn.execute("DROP INDEX models_symbol")
        conn.execute("ALTER TABLE sweeps ALTER COLUMN via SET DEFAULT 'api'")
        conn.execute("ALTER FUNCTION sfq_submit(jsonb, text) SECURITY INVOKER")
        conn.execute("COMMENT ON COLUMN models.run IS 'changed'")
        conn.execute("GRANT SELECT ON models TO sfq_submitter")
        actual = catalog(conn)
        conn.rollback()
    report = differences(expected, actual, ("before", "after"))
    for line in (
        "+sfq_left_behind() -> integer",
        "-CREATE INDEX models_symbol ON public.models USING btree (symbol, id)",
        "+sweeps.03 via: text NOT NULL DEFAULT 'api'::text",
        "-  security definer: true",
        "+column run of table models: changed",
        "+table models: sfq_submitter SELECT (by",
    ):
        assert line in report, f"{line!r} not in the report:\n{report}"


def test_sfq_new_model_maps_each_request_column_to_the_model_column_of_the_same_name(conn):
    request = conn.execute(
        "SELECT to_jsonb(r), to_jsonb(sfq_new_model(r)), spec(sfq_new_model(r)) = r.spec"
        " FROM sfq_canonical_request("
        " jsonb_populate_record(NULL::training_requests, sfq_request_defaults()"
        "   || %s::jsonb)) r",
        (json.dumps({"symbol": "AAPL", "timeout_s": 60, "priority": 7, "run": 2, **FAST}),),
    ).fetchone()
    as_request, as_model, spec_given_back = request
    shared = set(as_request) & set(as_model) - {"id"}
    assert {"fingerprint", "priority", "run", "timeout_s", "data_end"} <= shared
    # The spec is the model's columns and the fields no column holds (0031): given back whole.
    assert as_model["spec_extra"] == {"spec_version": 2, "execution_lag": 1} and spec_given_back
    assert {k: as_model[k] for k in shared} == {k: as_request[k] for k in shared}
    assert (as_model["id"], as_model["status"], as_model["attempts"], as_model["job_id"]) == (
        None,
        "queued",
        0,
        None,
    )


def test_sfq_insert_models_inserts_in_order_skips_live_fingerprints_and_returns_the_new_ids(conn):
    """The one INSERT INTO models: candidates in the order given; one whose fingerprint is live (before, or
    by an earlier candidate) is skipped; a failed one is inserted anyway (the DuckDB import's). A queued
    model records the id of its job to come, which is not deferred yet; a failed one has none."""
    with conn.transaction(force_rollback=True):
        candidates = [
            conn.execute(
                "SELECT sfq_new_model(sfq_canonical_request(jsonb_populate_record(NULL::training_requests,"
                " sfq_request_defaults() || %s::jsonb)))::text",
                (json.dumps({"symbol": "AAPL", "horizon": horizon, **FAST}),),
            ).fetchone()[0]
            for horizon in (7, 5, 7, 6)
        ]
        ids = conn.execute("SELECT sfq_insert_models(%s::models[])", (candidates,)).fetchone()[0]
        assert len(ids) == 3 and ids == sorted(ids)
        rows = conn.execute(
            "SELECT horizon, status::text, job_id FROM models WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
        assert [row[:2] for row in rows] == [(7, "queued"), (5, "queued"), (6, "queued")]
        jobs = [row[2] for row in rows]
        assert None not in jobs and len(set(jobs)) == 3
        deferred = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(%s)", (jobs,))
        assert deferred.fetchone()[0] == 0
        assert conn.execute("SELECT sfq_insert_models(%s::models[])", (candidates[:1],)).fetchone()[0] == []
        failed = conn.execute(
            'SELECT sfq_insert_models(ARRAY[jsonb_populate_record(%s::models, \'{"status": "failed"}\')])',
            (candidates[0],),
        ).fetchone()[0]
        assert len(failed) == 1 and failed[0] > ids[-1]
        assert conn.execute("SELECT job_id FROM models WHERE id = %s", (failed[0],)).fetchone()[0] is None


def test_sfq_defer_training_inserts_the_jobs_procrastinate_would_with_the_ids_the_models_recorded(conn):
    """sfq_defer_training writes procrastinate_defer_jobs_v1's INSERT itself, with the ids its models
    recorded (sql/schema/queue.sql): the jobs and their events are what Procrastinate's function makes of
    the same jobs, and that function is still that one INSERT (a Procrastinate that changes it fails here)."""
    body = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'procrastinate_defer_jobs_v1'"
    ).fetchone()[0]
    assert " ".join(body.split()) == (
        "DECLARE job_ids bigint[]; BEGIN WITH inserted_jobs AS ( INSERT INTO procrastinate_jobs (queue_name,"
        " task_name, priority, lock, queueing_lock, args, scheduled_at) SELECT (job).queue_name,"
        " (job).task_name, (job).priority, (job).lock, (job).queueing_lock, (job).args, (job).scheduled_at"
        " FROM unnest(jobs) AS job RETURNING id ) SELECT array_agg(id) FROM inserted_jobs INTO job_ids;"
        " RETURN job_ids; END;"
    )
    with conn.transaction(force_rollback=True):
        ids = [submit(conn, {"symbol": "AAPL", "horizon": horizon, **FAST}) for horizon in (5, 6)]
        recorded = [job_of(conn, model_id) for model_id in ids]
        theirs = conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY(SELECT sfq_training_job(m.id, m.priority) FROM models m"
            " WHERE m.id = ANY(%s) ORDER BY m.id))",
            (ids,),
        ).fetchone()[0]
        columns = (
            "queue_name, task_name, priority, lock, queueing_lock, args, status, scheduled_at, attempts,"
            " abort_requested, worker_id"
        )
        jobs = (
            f"SELECT {columns}, (SELECT array_agg(e.type::text) FROM procrastinate_events e"
            " WHERE e.job_id = j.id) FROM procrastinate_jobs j WHERE j.id = ANY(%s) ORDER BY j.id"
        )
        assert conn.execute(jobs, (recorded,)).fetchall() == conn.execute(jobs, (theirs,)).fetchall()
        assert len(conn.execute(jobs, (recorded,)).fetchall()) == 2
        nothing = conn.execute("SELECT sfq_defer_training(ARRAY[]::bigint[], ARRAY[]::integer[])")
        assert nothing.fetchone()[0] == []  # a sweep whose every model was there already


def test_a_training_job_is_deferred_without_procrastinates_deferred_event_and_other_jobs_with_it(conn):
    """A training job's 'deferred' event is not written (sql/schema/queue.sql: 5-10 % of the enqueue rate,
    read by nothing); another job's is, by Procrastinate's own function; a training job's status changes are
    still Procrastinate's events."""
    events = "SELECT array_agg(e.type::text ORDER BY e.id) FROM procrastinate_events e WHERE e.job_id = %s"
    with conn.transaction(force_rollback=True):
        training = job_of(conn, submit(conn, {"symbol": "AAPL", **FAST}))
        other = conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('simulation', 'run_simulation', 0, NULL, NULL,"
            " '{}', NULL)::procrastinate_job_to_defer_v1])"
        ).fetchone()[0][0]
        assert conn.execute(events, (training,)).fetchone()[0] is None
        assert conn.execute(events, (other,)).fetchone()[0] == ["deferred"]
        conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (training,))
        assert conn.execute(events, (training,)).fetchone()[0] == ["started"]


# ---------------------------------------------------------------------------------------------------------
# Procrastinate's own migrations.

FIXTURES = ROOT / ".venv" / "sfq-fixtures"


def procrastinate_schema_of(minor: str) -> tuple[str, str]:
    """An older Procrastinate's version and schema.sql, from the wheel scripts/setup downloaded."""
    wheels = sorted(
        FIXTURES.glob(f"procrastinate-{minor}.*.whl"), key=lambda w: db.parse_version(w.name[14:])
    )
    if not wheels:
        pytest.skip(f"no procrastinate {minor}.* wheel in {FIXTURES}: scripts/setup downloads it (offline?)")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheels[-1].name.split("-")[1], wheel.read("procrastinate/sql/schema.sql").decode()


def test_procrastinate_versions_and_the_migrations_between_them():
    assert (
        db.parse_version("3.10") == db.parse_version("3.10.0") == db.parse_version("03.10.00") == (3, 10, 0)
    )
    assert db.parse_version("3.10.0.dev1") == (3, 10, 0)
    between = [m.name.rsplit("/", 1)[1] for m in db.procrastinate_migrations((3, 3, 0), (3, 10, 0))]
    assert between == [
        "03.04.00_01_pre_add_retry_failed_job_procedure.sql",
        "03.04.00_50_post_add_retry_failed_job_procedure.sql",
    ]
    assert db.procrastinate_migrations((3, 4, 0), (3, 10, 0)) == []  # 3.4's own are in its schema.sql
    assert [m.name for m in db.procrastinate_migrations((3, 2, 0), (3, 3, 0))] == [
        "procrastinate/migrations/03.03.00_01_pre_priority_lock_fetch_job.sql"
    ]


RETRY_FAILED_JOB = [
    "03.04.00_01_pre_add_retry_failed_job_procedure.sql",
    "03.04.00_50_post_add_retry_failed_job_procedure.sql",
]


@pytest.mark.parametrize(
    ("minor", "migrations"),
    [
        ("3.9", []),
        ("3.3", RETRY_FAILED_JOB),
    ],  # the previous minor version (no migration since), and an older one
)
def test_a_database_made_with_an_older_procrastinate_is_migrated_to_the_installed_one(
    make_database, databases, minor, migrations
):
    """sfq's migrations on an older Procrastinate's schema, recorded as sfq recorded it (procrastinate/X.Y);
    `sfq db upgrade` applies Procrastinate's migrations since, in the same transaction, then sfq's."""
    version, schema = procrastinate_schema_of(minor)
    url = make_database("sfq_procrastinate_" + minor.replace(".", "_"))
    build_through_every_migration(url, schema, f"procrastinate/{minor}")
    installed = f"procrastinate/{procrastinate.__version__}"
    applied = db.upgrade(url)
    assert applied[: len(migrations) + 1] == [
        *(f"procrastinate/migrations/{m}" for m in migrations),
        installed,
    ]
    assert applied[len(migrations) + 1 :] == [
        "migrations/0009_schema_files.sql",
        "migrations/0010_trade_what_was_predicted.sql",
        "migrations/0011_walk_forward.sql",
        "migrations/0012_lockbox.sql",
        "migrations/0013_bar_revisions.sql",
        "migrations/0014_symbol_calendars.sql",
        "migrations/0015_studies.sql",
        "migrations/0016_strategy_registry.sql",
        "migrations/0017_read_paths.sql",
        "migrations/0018_retrain_policies.sql",
        "migrations/0019_trace_context.sql",
        "migrations/0020_artifact_store.sql",
        "migrations/0021_enqueue_path.sql",
        "migrations/0023_prune_in_batches.sql",
        "migrations/0025_compact_model_rows.sql",
        "migrations/0026_wake_only_sleepers.sql",
        "migrations/0027_one_round_a_fleet.sql",
        "migrations/0028_wake_one_sleeper.sql",
        "migrations/0029_fetch_probes_locks_by_index.sql",
        "migrations/0031_spec_from_columns.sql",
        "migrations/0032_fleet_size.sql",
        "migrations/0033_symbol_algorithm_index.sql",
        "migrations/0034_bar_revisions_in_the_pin.sql",
        "migrations/0035_training_jobs_without_deferred_events.sql",
        *(f"schema/{name}" for name in db.SCHEMA_FILES),
    ]
    db.apply_roles(url)
    with psycopg.connect(databases.fresh) as fresh, psycopg.connect(url) as upgraded:
        report = differences(
            catalog(fresh), catalog(upgraded), ("new database", f"from procrastinate {version}")
        )
        recorded = [
            r[0] for r in upgraded.execute("SELECT name FROM sfq_migrations WHERE name ~ '^procrastinate/'")
        ]
    assert not report, f"a database made with procrastinate {version} differs once upgraded:\n" + report
    assert recorded == [installed]
    with psycopg.connect(url, autocommit=True) as conn:
        write_after_the_upgrade(conn)


def test_a_database_with_a_newer_procrastinate_is_refused(make_database):
    url = make_database("sfq_procrastinate_newer")
    db.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE sfq_migrations SET name = 'procrastinate/3.11.0' WHERE name ~ '^procrastinate/'")
    with pytest.raises(db.MigrationError) as refused:
        db.upgrade(url)
    assert str(refused.value) == (
        f"the database has the schema of procrastinate 3.11.0, newer than the installed procrastinate "
        f"{procrastinate.__version__}: upgrade sfq (and its procrastinate) instead"
    )
