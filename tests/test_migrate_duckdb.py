"""`sfq migrate-duckdb`: a legacy DuckDB file built here, imported twice into a database of its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg.rows import dict_row

from queue_app import bars, db, gateway, legacy
from queue_app.errors import Rejected
from tests.conftest import run_sfq

LEGACY_TABLES = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY, symbol VARCHAR, timeframe VARCHAR, algorithm VARCHAR, target_col VARCHAR,
    target_transform VARCHAR, horizon INTEGER, hyperparameters VARCHAR, features VARCHAR,
    train_window INTEGER, test_window INTEGER, cv_folds INTEGER, cv_strategy VARCHAR, alpha_grid VARCHAR,
    l1_ratio_grid VARCHAR, context_symbols VARCHAR, regime_configs VARCHAR, data_end TIMESTAMP,
    parent_model_id INTEGER, status VARCHAR, created_at TIMESTAMP, completed_at TIMESTAMP, metrics VARCHAR,
    error VARCHAR, fingerprint VARCHAR);
CREATE TABLE features_log (model_id INTEGER, feature_name VARCHAR, importance DOUBLE, logged_at TIMESTAMP);
CREATE TABLE simulation_history (
    id INTEGER, model_id INTEGER, strategy VARCHAR, params VARCHAR, start_date DATE, end_date DATE,
    total_return DOUBLE, sharpe DOUBLE, max_drawdown DOUBLE, n_trades INTEGER, equity_curve VARCHAR,
    created_at TIMESTAMP);
"""
RF = '{"n_estimators": 50, "max_depth": 5}'
METRICS_1 = {"r2": 0.01, "rmse": 0.02, "mae": 0.015, "directional_accuracy": 0.53}


def model(legacy_id: int, **fields) -> dict:
    """A legacy model: a completed daily RandomForest on AAPL up to 2012-12-31 (a sample bar) unless told."""
    day = f"2024-03-{legacy_id:02d}"
    return {
        "id": legacy_id, "symbol": "AAPL", "timeframe": "1d", "algorithm": "RandomForest", "horizon": 1,
        "hyperparameters": "{}", "train_window": 500, "test_window": 100, "cv_folds": 3,
        "cv_strategy": "expanding", "data_end": "2012-12-31 00:00:00", "status": "completed",
        "created_at": f"{day} 10:00:00", "completed_at": f"{day} 10:05:00", "metrics": "{}",
        "fingerprint": f"old-{legacy_id}",
    } | fields  # fmt: skip


MODELS = [
    model(1, hyperparameters=RF, features='["ret_1", "ret_5", "vol_20"]', metrics=json.dumps(METRICS_1)),
    # A child, features as a comma list, NaN in its metrics, parameters sfq sets itself.
    model(2, algorithm="ExtraTrees", hyperparameters='{"n_estimators": 80, "random_state": 42, "n_jobs": -1}',
          features="ret_1, ret_5,vol_20", parent_model_id=1, metrics='{"r2": NaN, "rmse": 0.021}'),
    # Its parent (9) comes later in the file; empty grids and context symbols, no cv_strategy.
    model(3, symbol="MSFT", algorithm="Ridge", hyperparameters='{"alpha": 2}', horizon=5, train_window=600,
          cv_folds=4, cv_strategy=None, alpha_grid="", l1_ratio_grid="[]", context_symbols="[]",
          parent_model_id=9),
    model(4, algorithm="GradientBoosting", status="failed", error="ValueError: not enough bars",
          metrics=None),
    model(5, symbol="MSFT", algorithm="Lasso", hyperparameters=None, status="running", completed_at=None,
          metrics=None),
    # The same spec as 1, written differently.
    model(6, symbol="aapl", timeframe=None, hyperparameters='{"max_depth": 5, "n_estimators": 50.0}',
          features='["vol_20", "ret_1", "ret_5", "ret_1"]', cv_strategy=None),
    model(7, algorithm="XGBoost"),
    model(8, algorithm="Ridge", horizon=0),
    model(9, symbol="MSFT", algorithm="ElasticNet", alpha_grid="[0.1, 0.01]", l1_ratio_grid="0.2, 0.8"),
    model(10, hyperparameters='{"n_estimators": '),
    model(11, algorithm="Ridge", status="exploded", completed_at=None),
    # Its parent (7) is refused: imported without one.
    model(12, symbol="IBM", parent_model_id=7),
]  # fmt: skip
FEATURES = [
    (1, "ret_1", 0.5, "2024-03-01 10:05:00"),
    (1, "ret_1", 0.1, "2024-02-01 10:05:00"),  # an older row for the same feature: superseded
    (1, "ret_5", 0.2, "2024-03-01 10:05:00"),
    (1, "vol_20", 0.3, "2024-03-01 10:05:00"),
    (2, "ret_1", 0.6, "2024-03-02 10:04:00"),
    (2, "ret_5", 0.4, "2024-03-02 10:04:00"),
    (2, "vol_5", float("nan"), "2024-03-02 10:04:00"),
    (6, "ret_1", 0.45, "2024-03-06 10:05:00"),  # 6 is model 1: already there
    (7, "ret_1", 0.9, "2024-03-07 10:05:00"),
    (99, "ret_1", 0.1, "2024-03-07 10:05:00"),
]
EQUITY = [["2013-01-02", 1.0], ["2013-06-28", 1.12]]
THRESHOLD = '{"threshold": 0.001}'
SIMULATIONS = [
    (1, 1, "long_short", THRESHOLD, "2013-01-02", "2013-06-28", 0.12, 1.1, -0.05, 40,
     json.dumps(EQUITY), "2024-03-01 11:00:00"),
    (2, 1, "long_only", None, None, None, 0.08, float("nan"), -0.07, 12, None, "2024-03-01 12:00:00"),
    # 6 is model 1: the same backtest as 1.
    (3, 6, "long_short", THRESHOLD, "2013-01-02", "2013-06-28", 0.12, 1.1, -0.05, 40, None, None),
    (4, 42, "long_only", "{}", None, None, 0.0, 0.0, 0.0, 0, None, None),
    (5, 8, "long_only", "{}", None, None, 0.0, 0.0, 0.0, 0, None, None),
    (6, 9, "long_only", "not json", None, None, 0.0, 0.0, 0.0, 0, None, None),
]  # fmt: skip

# (read, inserted, already present, unmappable) per table, first run.
FIRST_RUN = {"models": (12, 7, 1, 4), "features_log": (10, 5, 2, 3), "simulation_history": (6, 2, 1, 3)}
SECOND_RUN = {"models": (12, 0, 8, 4), "features_log": (10, 0, 7, 3), "simulation_history": (6, 0, 3, 3)}


def make_legacy_file(path: Path, drop: str | None = None) -> Path:
    with duckdb.connect(str(path)) as duck:
        duck.execute(LEGACY_TABLES)
        for row in MODELS:
            duck.execute(
                f"INSERT INTO models ({', '.join(row)}) VALUES ({', '.join(['?'] * len(row))})",
                list(row.values()),
            )
        duck.executemany("INSERT INTO features_log VALUES (?, ?, ?, ?)", FEATURES)
        duck.executemany(f"INSERT INTO simulation_history VALUES ({', '.join(['?'] * 12)})", SIMULATIONS)
        if drop:
            duck.execute(drop)
    return path


@pytest.fixture
def target(make_database) -> str:
    """A database of this test's own (upgraded, no bars), so that counts are this file's alone."""
    url = make_database("sfq_legacy")
    db.upgrade(url)
    return url


@pytest.fixture
def legacy_file(tmp_path) -> Path:
    return make_legacy_file(tmp_path / "legacy.duckdb")


def counts(report: legacy.Report) -> dict[str, tuple[int, int, int, int]]:
    tables = {name: getattr(report, name) for name in FIRST_RUN}
    return {name: (t.read, t.inserted, t.skipped, len(t.unmappable)) for name, t in tables.items()}


def table_sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("models", "features_log", "simulation_history", "procrastinate_jobs")
        }


def imported_models(conn: psycopg.Connection) -> dict[int, dict]:
    """Legacy id -> its model row."""
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            "SELECT m.*, m.spec FROM models m WHERE imported_from LIKE 'duckdb:legacy.duckdb#%'"
        ).fetchall()
    return {int(row["imported_from"].rpartition("#")[2]): row for row in rows}


def test_import_twice(target, legacy_file):
    first = legacy.migrate(target, legacy_file, dry_run=False)
    assert counts(first) == FIRST_RUN
    sizes = table_sizes(target)
    assert sizes == {"models": 7, "features_log": 5, "simulation_history": 2, "procrastinate_jobs": 0}

    second = legacy.migrate(target, legacy_file, dry_run=False)
    assert counts(second) == SECOND_RUN
    assert table_sizes(target) == sizes
    assert second.models.unmappable == first.models.unmappable


def test_models(target, legacy_file):
    report = legacy.migrate(target, legacy_file, dry_run=False)
    with psycopg.connect(target) as conn:
        models = imported_models(conn)
    assert sorted(models) == [1, 2, 3, 4, 5, 9, 12]
    one = models[1]
    assert one["status"] == "completed" and one["metrics"] == METRICS_1 and one["error"] is None
    assert one["data_end"] == datetime(2012, 12, 31, tzinfo=UTC)
    assert one["submitted_at"] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert one["finished_at"] == datetime(2024, 3, 1, 10, 5, tzinfo=UTC)
    assert one["spec"]["hyperparameters"]["n_estimators"] == 50
    assert one["features"] == one["spec"]["features"] == ["ret_1", "ret_5", "vol_20"]
    assert one["spec"]["data_end"] == "2012-12-31T00:00:00.000000Z"
    assert one["job_id"] is None and one["attempts"] == 0 and one["run"] == 1

    assert models[2]["features"] == ["ret_1", "ret_5", "vol_20"]
    # The old service stored the parameters sfq sets itself: dropped, not refused.
    assert models[2]["spec"]["hyperparameters"]["n_estimators"] == 80
    assert "random_state" not in models[2]["spec"]["hyperparameters"]
    assert models[2]["metrics"] == {"r2": None, "rmse": 0.021}
    assert models[3]["features"] == models[5]["features"]  # NULL: the default set
    assert models[9]["alpha_grid"] == [0.01, 0.1] and models[9]["l1_ratio_grid"] == [0.2, 0.8]
    assert "alpha" not in models[9]["hyperparameters"] and "l1_ratio" not in models[9]["hyperparameters"]

    # Parents mapped to the new ids, whatever their order in the file.
    assert models[2]["parent_model_id"] == one["id"]
    assert models[3]["parent_model_id"] == models[9]["id"]
    assert models[12]["parent_model_id"] is None
    assert f"id 12 (model {models[12]['id']}) imported without its parent: legacy id 7 was not imported" in (
        report.models.notes
    )

    assert (models[4]["status"], models[4]["error"]) == ("failed", "ValueError: not enough bars")
    assert models[5]["status"] == "failed"
    assert models[5]["error"] == "imported from the old service while running; resubmit it"
    assert models[5]["finished_at"] is None

    assert report.models.notes[0] == f"duplicate id 6: same spec as legacy id 1 (model {one['id']})"
    reasons = dict(report.models.unmappable)
    assert set(reasons) == {"id 7", "id 8", "id 10", "id 11"}
    assert reasons["id 7"].startswith("algorithm: 'XGBoost' is not one of ")
    assert reasons["id 8"] == "horizon: must be between 1 and 1000, got 0"
    assert reasons["id 10"].startswith("hyperparameters: not valid JSON")
    assert reasons["id 11"].startswith("status: 'exploded' is not one of completed, failed")


def test_fingerprint_is_sfqs_own(target, legacy_file):
    """The same spec submitted to sfq (data_end pinned to the same bar, and the old service's label, from
    the signal's close: execution_lag 0) is the imported model."""
    with psycopg.connect(target, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            if symbol == "AAPL":
                bars.load(conn, symbol, "1d", rows)
        legacy.migrate(target, legacy_file, dry_run=False)
        one = imported_models(conn)[1]
        request = {
            "symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": json.loads(RF),
            "features": ["vol_20", "ret_5", "ret_1"], "train_window": 500, "test_window": 100, "cv_folds": 3,
            "data_end": "2012-12-31T12:00:00Z", "execution_lag": 0,
        }  # fmt: skip
        model_id, fingerprint, deduplicated = conn.execute(
            "SELECT model_id, fingerprint, deduplicated FROM sfq_submit(%s::jsonb)", (json.dumps(request),)
        ).fetchone()
        assert (model_id, fingerprint, deduplicated) == (one["id"], one["fingerprint"], True)
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


def test_duplicate_of_an_sfq_model(target, legacy_file):
    """A legacy model whose spec sfq already has (live, here queued; the old service's label has
    execution_lag 0) maps to that model."""
    with psycopg.connect(target, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            if symbol == "AAPL":
                bars.load(conn, symbol, "1d", rows)
        request = {
            "symbol": "AAPL", "hyperparameters": json.loads(RF), "features": ["ret_1", "ret_5", "vol_20"],
            "train_window": 500, "test_window": 100, "cv_folds": 3, "data_end": "2012-12-31",
            "execution_lag": 0,
        }  # fmt: skip
        (model_id,) = conn.execute(
            "SELECT model_id FROM sfq_submit(%s::jsonb)", (json.dumps(request),)
        ).fetchone()
        report = legacy.migrate(target, legacy_file, dry_run=False)
        assert counts(report)["models"] == (12, 6, 2, 4)
        assert report.models.notes[:2] == [
            f"duplicate id 1: same spec as model {model_id}",
            f"duplicate id 6: same spec as legacy id 1 (model {model_id})",
        ]
        assert conn.execute(
            "SELECT imported_from, status::text FROM models WHERE id = %s", (model_id,)
        ).fetchone() == (None, "queued")
        # Its features will be its own training's (the worker inserts them): the legacy ones are left out.
        assert conn.execute(
            "SELECT count(*) FROM features_log WHERE model_id = %s", (model_id,)
        ).fetchone() == (0,)
        assert counts(report)["features_log"] == (10, 2, 5, 3)
        assert report.features_log.notes == [
            f"4 row(s) of duplicate id 1 left out: model {model_id} keeps its own features",
            f"1 row(s) of duplicate id 6 left out: model {model_id} keeps its own features",
        ]
        assert imported_models(conn)[2]["parent_model_id"] == model_id  # legacy 2's parent, legacy 1


def test_features_and_simulations(target, legacy_file):
    report = legacy.migrate(target, legacy_file, dry_run=False)
    with psycopg.connect(target) as conn:
        models = imported_models(conn)
        features = conn.execute(
            "SELECT feature, importance, rank, method FROM features_log WHERE model_id = %s ORDER BY rank",
            (models[1]["id"],),
        ).fetchall()
        assert features == [
            ("ret_1", 0.5, 1, "legacy"),
            ("vol_20", 0.3, 2, "legacy"),
            ("ret_5", 0.2, 3, "legacy"),
        ]
        with conn.cursor(row_factory=dict_row) as cursor:
            simulations = cursor.execute("SELECT * FROM simulation_history ORDER BY imported_from").fetchall()
    assert [s["imported_from"] for s in simulations] == ["duckdb:legacy.duckdb#1", "duckdb:legacy.duckdb#2"]
    full, bare = simulations
    assert full["model_id"] == bare["model_id"] == models[1]["id"]
    assert full["params"] == {"threshold": 0.001}
    assert full["metrics"] == {"total_return": 0.12, "sharpe": 1.1, "max_drawdown": -0.05, "n_trades": 40}
    assert (full["period_start"], full["period_end"]) == (
        datetime(2013, 1, 2, tzinfo=UTC),
        datetime(2013, 6, 28, tzinfo=UTC),
    )
    assert full["equity_curve"] == EQUITY
    assert full["created_at"] == datetime(2024, 3, 1, 11, tzinfo=UTC)
    assert bare["params"] == {} and bare["period_start"] is None and bare["equity_curve"] is None
    assert bare["metrics"] == {
        "total_return": 0.08,
        "max_drawdown": -0.07,
        "n_trades": 12,
    }  # NaN sharpe dropped

    assert report.features_log.notes == [
        f"1 row(s) of duplicate id 6 left out: model {models[1]['id']} keeps its own features"
    ]
    assert report.features_log.unmappable == [
        ("model_id 2 feature vol_5", "needs a feature_name and a finite importance"),
        ("model_id 7 feature ret_1", "legacy model 7 was not imported"),
        ("model_id 99 feature ret_1", "no legacy model 99 in the file"),
    ]
    assert report.simulation_history.unmappable[:2] == [
        ("id 4", "no legacy model 42 in the file"),
        ("id 5", "legacy model 8 was not imported"),
    ]
    assert report.simulation_history.unmappable[2][0] == "id 6"
    assert report.simulation_history.unmappable[2][1].startswith("params: not valid JSON")


def test_dry_run_writes_nothing(target, legacy_file):
    report = legacy.migrate(target, legacy_file, dry_run=True)
    assert counts(report) == FIRST_RUN
    assert report.render().startswith("legacy.duckdb: dry run, rolled back (nothing was written)")
    assert table_sizes(target) == {
        "models": 0,
        "features_log": 0,
        "simulation_history": 0,
        "procrastinate_jobs": 0,
    }


def test_duckdb_column_types(target, tmp_path):
    """JSON, LIST, STRUCT, ENUM, DECIMAL and TIMESTAMPTZ columns read like their text forms."""
    path = tmp_path / "typed.duckdb"
    typed = (
        LEGACY_TABLES.replace("hyperparameters VARCHAR", "hyperparameters STRUCT(max_iter INTEGER)")
        .replace("features VARCHAR", "features VARCHAR[]")
        .replace("alpha_grid VARCHAR", "alpha_grid DOUBLE[]")
        .replace("metrics VARCHAR", "metrics JSON")
        .replace("data_end TIMESTAMP", "data_end TIMESTAMPTZ")
        .replace("status VARCHAR", "status ENUM('completed', 'failed')")
        .replace("importance DOUBLE", "importance DECIMAL(10, 4)")
    )
    with duckdb.connect(str(path)) as duck:
        duck.execute(typed)
        duck.execute(
            "INSERT INTO models (id, symbol, algorithm, hyperparameters, features, alpha_grid, metrics,"
            " data_end, status) VALUES (1, 'MSFT', 'ElasticNet', {'max_iter': 2000}, ['vol_5', 'ret_1'],"
            " [0.1, 0.01], '{\"r2\": 0.1}', '2012-12-31 01:00:00+01', 'completed')"
        )
        duck.execute("INSERT INTO features_log VALUES (1, 'ret_1', 0.25, NULL)")
    report = legacy.migrate(target, path, dry_run=False)
    assert counts(report) == {
        "models": (1, 1, 0, 0),
        "features_log": (1, 1, 0, 0),
        "simulation_history": (0, 0, 0, 0),
    }
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT m.features, m.alpha_grid, m.hyperparameters->'max_iter', m.metrics, m.data_end,"
            "       f.importance FROM models m JOIN features_log f ON f.model_id = m.id"
        ).fetchone()
    assert row == (
        ["ret_1", "vol_5"],
        [0.01, 0.1],
        2000,
        {"r2": 0.1},
        datetime(2012, 12, 31, tzinfo=UTC),
        0.25,
    )


@pytest.mark.parametrize(
    ("drop", "problem"),
    [
        ("DROP TABLE simulation_history", "no table simulation_history"),
        ("ALTER TABLE models DROP COLUMN metrics", "no column models.metrics"),
        ("ALTER TABLE models ALTER horizon TYPE VARCHAR", "models.horizon is VARCHAR, expected integer"),
    ],
)
def test_not_a_legacy_layout(target, tmp_path, drop, problem):
    path = make_legacy_file(tmp_path / "other.duckdb", drop)
    with pytest.raises(Rejected, match=f"other.duckdb is not the old service's layout: {problem}"):
        legacy.migrate(target, path, dry_run=False)
    assert table_sizes(target)["models"] == 0


def test_unreadable_file(target, tmp_path):
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database\n")
    with pytest.raises(Rejected, match="cannot read .*notes.duckdb as a DuckDB database"):
        legacy.migrate(target, text, dry_run=False)
    with pytest.raises(Rejected, match="no such file: .*missing.duckdb"):
        legacy.migrate(target, tmp_path / "missing.duckdb", dry_run=False)


def test_cli(target, legacy_file):
    dry = run_sfq("migrate-duckdb", str(legacy_file), "--dry-run", url=target)
    assert dry.returncode == 0, dry.stderr
    assert "dry run, rolled back" in dry.stdout
    assert "models              read 12, to insert 7, already present 1, unmappable 4" in dry.stdout
    assert table_sizes(target)["models"] == 0

    first = run_sfq("migrate-duckdb", str(legacy_file), url=target)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "models              read 12, inserted 7, already present 1, unmappable 4" in lines
    assert "features_log        read 10, inserted 5, already present 2, unmappable 3" in lines
    assert "simulation_history  read 6, inserted 2, already present 1, unmappable 3" in lines
    assert "  unmappable id 8: horizon: must be between 1 and 1000, got 0" in lines

    second = run_sfq("migrate-duckdb", str(legacy_file), url=target)
    assert second.returncode == 0, second.stderr
    assert "models              read 12, inserted 0, already present 8, unmappable 4" in second.stdout
    assert table_sizes(target) == {
        "models": 7,
        "features_log": 5,
        "simulation_history": 2,
        "procrastinate_jobs": 0,
    }


def test_cli_not_a_legacy_layout(target, tmp_path):
    path = make_legacy_file(tmp_path / "other.duckdb", "DROP TABLE features_log")
    result = run_sfq("migrate-duckdb", str(path), url=target)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "sfq: other.duckdb is not the old service's layout: no table features_log\n"


def test_specs_merged_by_the_import_never_make_a_parent_loop(tmp_path, target):
    """Legacy 1 (spec X, parent 2), 2 (spec Y, parent 3), 3 (spec X): 1 and 3 are one model, whose
    parent would be 2, whose parent would be that same model. The loop is cut and lineage answers."""
    path = tmp_path / "loop.duckdb"
    with duckdb.connect(str(path)) as duck:
        duck.execute(LEGACY_TABLES)
        for row in (
            model(1, parent_model_id=2),
            model(2, algorithm="Ridge", hyperparameters="{}", parent_model_id=3),
            model(3),
        ):
            duck.execute(
                f"INSERT INTO models ({', '.join(row)}) VALUES ({', '.join(['?'] * len(row))})",
                list(row.values()),
            )
    report = legacy.migrate(target, path, dry_run=False)
    assert any("would make a loop" in note for note in report.models.notes), report.render()
    with psycopg.connect(target) as conn:
        (x,) = conn.execute("SELECT id FROM models WHERE algorithm = 'RandomForest'").fetchone()
        rows = gateway.run(conn, gateway.lineage(x))
    assert len(rows) == 2  # the two models, each once
