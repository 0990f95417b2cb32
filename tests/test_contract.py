"""The contract between the workers' registries and the database that validates requests against it."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from queue_app.spec import FIELDS
from tests.conftest import ROOT
from workers.modelling import contract
from workers.modelling.algorithms import ALGORITHMS, CONTROLLED_PARAMS
from workers.modelling.backtest import TIMEFRAME
from workers.modelling.features import DEFAULT_FEATURES, FEATURES
from workers.modelling.splits import MIN_FIT_ROWS, SPLITTERS
from workers.modelling.training import TARGET_COLUMNS, TRANSFORMS

NOT_SPEC_COLUMNS = ("id", "received_at", "via", "model_id", "fingerprint", "deduplicated", "spec")


def canonical(conn, algorithm: str, given: str) -> str:
    """The canonical hyperparameters as the database stores them (its text form is what is hashed)."""
    return conn.execute("SELECT sfq_canonical_hyperparameters(%s, %s)::text", (algorithm, given)).fetchone()[
        0
    ]


def test_registry_sql_is_up_to_date():
    on_disk = (ROOT / "sql" / "schema" / "registry.sql").read_text()
    assert on_disk == contract.render(), (
        "sql/schema/registry.sql is stale: regenerate it with"
        " `python -m workers.modelling.contract > sql/schema/registry.sql`"
    )


def typed(params: dict) -> dict:
    """Parameters with their types, so that 1 and 1.0 (or 0 and False) do not compare equal."""
    return {name: (type(value), value) for name, value in params.items()}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_database_defaults_build_the_estimators_defaults(conn, name):
    algorithm = ALGORITHMS[name]
    defaults = conn.execute("SELECT sfq_canonical_hyperparameters(%s, '{}')", (name,)).fetchone()[0]
    assert defaults, f"no hyperparameters for {name} in sfq_algorithms"
    assert not set(defaults) & set(CONTROLLED_PARAMS)
    built = algorithm.build(defaults)[-1]
    assert type(built) is algorithm.estimator
    plain = algorithm.estimator().get_params()
    uncontrolled = {key: value for key, value in built.get_params().items() if key not in CONTROLLED_PARAMS}
    assert typed(uncontrolled) == typed({k: v for k, v in plain.items() if k not in CONTROLLED_PARAMS})
    # The controlled ones are sfq's, whatever the spec says.
    for key, value in CONTROLLED_PARAMS.items():
        if key in plain:
            assert built.get_params()[key] == value


def test_integer_written_as_float_is_the_same_integer(conn):
    assert canonical(conn, "RandomForest", '{"n_estimators": 100.0}') == canonical(
        conn, "RandomForest", '{"n_estimators": 100}'
    )
    value = conn.execute(
        """SELECT (sfq_canonical_hyperparameters('RandomForest', '{"n_estimators": 100.0}')
                   ->'n_estimators')::text"""
    ).fetchone()[0]
    assert value == "100" and type(json.loads(value)) is int


def test_max_features_one_and_one_point_zero_stay_different(conn):
    as_int = canonical(conn, "RandomForest", '{"max_features": 1}')
    as_float = canonical(conn, "RandomForest", '{"max_features": 1.0}')
    assert as_int != as_float  # one feature per split vs 100% of the features: different models
    one, all_ = json.loads(as_int)["max_features"], json.loads(as_float)["max_features"]
    assert (type(one), one) == (int, 1)
    assert (type(all_), all_) == (float, 1.0)
    # The worker's estimators read them the way scikit-learn means them.
    features = 5
    narrow = ALGORITHMS["RandomForest"].build({"max_features": one, "n_estimators": 1})
    wide = ALGORITHMS["RandomForest"].build({"max_features": all_, "n_estimators": 1})
    X = [[float(i * j % 7) for j in range(features)] for i in range(20)]
    y = [float(i) for i in range(20)]
    assert narrow.fit(X, y)[-1].estimators_[0].max_features_ == 1
    assert wide.fit(X, y)[-1].estimators_[0].max_features_ == features


def test_float_parameter_written_as_integer_is_the_same_float(conn):
    assert canonical(conn, "ElasticNet", '{"alpha": 1}') == canonical(conn, "ElasticNet", '{"alpha": 1.0}')
    alpha = json.loads(canonical(conn, "ElasticNet", '{"alpha": 1}'))["alpha"]
    assert (type(alpha), alpha) == (float, 1.0)


def test_spec_fields_are_the_request_columns(conn):
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'training_requests'"
            " ORDER BY ordinal_position"
        )
    ]
    assert columns, "no training_requests table"
    assert [field.name for field in FIELDS] == [c for c in columns if c not in NOT_SPEC_COLUMNS]


def test_default_features_are_the_databases(conn):
    rows = conn.execute("SELECT name, description, is_default FROM sfq_features ORDER BY position").fetchall()
    assert tuple(name for name, _, is_default in rows if is_default) == DEFAULT_FEATURES
    assert rows == [(f.name, f.description, f.default) for f in FEATURES.values()]


def test_the_duckdb_import_drops_exactly_the_parameters_sfq_controls():
    from queue_app.legacy import RUNTIME_PARAMS
    from workers.modelling.algorithms import CONTROLLED_PARAMS

    assert set(RUNTIME_PARAMS) == set(CONTROLLED_PARAMS)


def test_the_vocabulary_is_the_workers(conn):
    vocabulary = conn.execute(
        "SELECT sfq_target_columns(), sfq_target_transforms(), sfq_cv_strategies(), sfq_min_fit_rows(),"
        " sfq_min_train_window(5, 1)"
    ).fetchone()
    assert vocabulary == (list(TARGET_COLUMNS), list(TRANSFORMS), list(SPLITTERS), MIN_FIT_ROWS, 6 * 11)


TIMEFRAMES = ["1d", "5m", "15m", "4h", "1w", "1mo", "12mo", "30s", "10d", "0d", "01d", "1", "d", "1y", "1dd",
              "1mos", " 1d", "1d ", "1d\n", "1D", "1 d", ""]  # fmt: skip


@pytest.mark.parametrize("timeframe", TIMEFRAMES)
def test_the_database_reads_timeframes_as_the_workers_do(conn, timeframe):
    assert TIMEFRAME.pattern == conn.execute("SELECT sfq_timeframe_pattern()").fetchone()[0]
    in_sql = conn.execute("SELECT %s ~ sfq_timeframe_pattern()", (timeframe,)).fetchone()[0]
    assert in_sql == (TIMEFRAME.fullmatch(timeframe) is not None)


@pytest.mark.parametrize(
    ("call", "column", "message"),
    [
        ('{"target_col": "vwap"}', "target_col", "'vwap' is not one of open, high, low, close"),
        (
            '{"target_transform": "log"}',
            "target_transform",
            "'log' is not one of log_return, pct_change, diff, raw",
        ),
        ('{"cv_strategy": "rolling"}', "cv_strategy", "'rolling' is not one of expanding, sliding, purged"),
        ('{"timeframe": "daily"}', "timeframe", "'daily' is not a timeframe such as 1d, 1h or 5m"),
        (
            '{"train_window": 60, "cv_folds": 10}',
            "train_window",
            "must hold at least (cv_folds + 1) x (execution_lag + horizon + 10) = 132 bars for 10 folds, "
            "got 60",
        ),
        (
            'batch {"target_col": "close"}',
            "target_col",
            "is set by the batch: one model per target (open, close, high, low)",
        ),
    ],
)
def test_the_vocabularys_refusals_read_as_they_always_did(conn, call, column, message):
    batch = call.startswith("batch ")
    request = json.loads(call.removeprefix("batch ")) | {"symbol": "AAPL"}
    query = "SELECT * FROM sfq_submit_batch(%s)" if batch else "SELECT * FROM sfq_submit(%s)"
    with pytest.raises(psycopg.errors.DatabaseError) as raised:
        conn.execute(query, (json.dumps(request),))
    assert raised.value.diag.message_primary == f"invalid training request: {column}: {message}"
    assert raised.value.diag.column_name == column


def test_the_calendars_are_the_same_words_everywhere(conn):
    from queue_app.vocabulary import CALENDARS
    from workers.modelling.backtest import CALENDARS as MEANINGS

    check = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'symbol_calendars'::regclass"
        " AND contype = 'c'"
    ).fetchone()[0]
    assert tuple(MEANINGS) == CALENDARS
    assert re.findall(r"'([^']+)'::text", check) == list(CALENDARS)


def test_the_trial_states_are_the_same_words_everywhere(conn):
    from queue_app.studies import SUCCEEDED
    from queue_app.vocabulary import TRIAL_STATES

    check = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'study_trials'::regclass"
        " AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%state%'"
    ).fetchone()[0]
    assert re.findall(r"'([^']+)'::text", check) == list(TRIAL_STATES)
    assert set(SUCCEEDED) < set(TRIAL_STATES)
