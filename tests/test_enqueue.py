"""The one way in: INSERT INTO training_requests. Validation, defaults, fingerprint, dedup, jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from queue_app import gateway
from queue_app.errors import Rejected
from queue_app.vocabulary import PREDICTION_QUEUE, SIMULATION_QUEUE, STUDY_QUEUE, TRAINING_QUEUE
from tests.conftest import ROOT, insert_request

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}


def jobs(conn) -> list[tuple]:
    return conn.execute(
        "SELECT task_name, queue_name, args, status::text FROM procrastinate_jobs ORDER BY id"
    ).fetchall()


def test_plain_insert_returns_model_and_defers_one_job(clean):
    model_id, fingerprint, deduplicated = insert_request(clean, {"symbol": "AAPL"})
    assert not deduplicated and len(fingerprint) == 64
    model = clean.execute(
        "SELECT status::text, symbol, timeframe, target_col, target_transform, horizon, algorithm,"
        " train_window, test_window, cv_folds, cv_strategy, data_end, job_id FROM models WHERE id = %s",
        (model_id,),
    ).fetchone()
    latest_bar = clean.execute(
        "SELECT max(ts) FROM bars WHERE symbol = 'AAPL' AND timeframe = '1d'"
    ).fetchone()[0]
    assert model[:11] == (
        "queued",
        "AAPL",
        "1d",
        "close",
        "log_return",
        1,
        "RandomForest",
        1000,
        250,
        5,
        "expanding",
    )
    assert model[11] == latest_bar  # data_end defaults to the latest bar and is pinned on the row
    assert jobs(clean) == [("train_model", "training", {"model_id": model_id}, "todo")]
    assert clean.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()[0] is not None


def test_duplicate_insert_gets_existing_model_and_no_new_job(clean):
    first = insert_request(clean, {"symbol": "MSFT", **FAST})
    second = insert_request(clean, {"symbol": "msft ", **FAST})  # normalised symbol: same request
    assert second == (first[0], first[1], True)
    assert len(jobs(clean)) == 1
    assert (
        clean.execute("SELECT count(*) FROM training_requests").fetchone()[0] == 2
    )  # both requests recorded


def test_rolled_back_insert_leaves_no_model_and_no_job(clean, database):
    with psycopg.connect(database) as conn:  # a transaction, as another service would hold it
        model_id, _, _ = insert_request(conn, {"symbol": "IBM", **FAST})
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 1
        conn.rollback()
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == 0
    assert jobs(clean) == []


def test_multi_row_insert_returns_each_model_and_defers_one_job_per_new_model(clean):
    existing = insert_request(clean, {"symbol": "AAPL", **FAST})
    rows = clean.execute(
        "INSERT INTO training_requests"
        " (symbol, algorithm, train_window, test_window, hyperparameters, priority)"
        " VALUES ('MSFT', 'Ridge', 300, 60, '{\"alpha\": 1}', 5), ('aapl', 'Ridge', 300, 60, '{}', 0),"
        " ('MSFT', 'Ridge', 300, 60, '{\"alpha\": 1.0}', 7), ('IBM', 'Ridge', 300, 60, '{}', -3)"
        " RETURNING model_id, fingerprint, deduplicated"
    ).fetchall()
    msft, aapl, msft_again, ibm = rows
    assert aapl == (existing[0], existing[1], True)  # an earlier statement's model
    assert msft_again == (msft[0], msft[1], True)  # a model of this very statement
    assert not msft[2] and not ibm[2] and len({existing[0], msft[0], ibm[0]}) == 3
    # One job per new model, in the order of the requests, with the priority of the request that created it.
    assert clean.execute(
        "SELECT (j.args->>'model_id')::bigint, j.priority"
        " FROM models m JOIN procrastinate_jobs j ON j.id = m.job_id ORDER BY j.id"
    ).fetchall() == [(existing[0], 0), (msft[0], 5), (ibm[0], -3)]
    assert len(jobs(clean)) == 3


def test_insert_select_enqueues_every_row_in_one_statement(clean):
    rows = clean.execute(
        "INSERT INTO training_requests (symbol, algorithm, train_window, test_window, hyperparameters)"
        " SELECT 'GOOG', 'Ridge', 300, 60, jsonb_build_object('alpha', 1 + i % 100)"
        "   FROM generate_series(0, 249) i"
        " RETURNING model_id, deduplicated"
    ).fetchall()
    assert [deduplicated for _, deduplicated in rows] == [False] * 100 + [True] * 150
    ids = [model_id for model_id, _ in rows]
    assert ids[100:] == ids[:100] + ids[:50]  # duplicates within the statement get the first row's model
    assert clean.execute(
        "SELECT count(*), count(DISTINCT m.job_id) FROM models m JOIN procrastinate_jobs j ON j.id = m.job_id"
        " WHERE j.args = jsonb_build_object('model_id', m.id)"
    ).fetchone() == (100, 100)


def test_multi_row_insert_with_one_bad_row_changes_nothing(clean):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        clean.execute(
            "INSERT INTO training_requests (symbol, algorithm, horizon)"
            " VALUES ('MSFT', 'Ridge', 1), ('IBM', 'Ridge', 2), ('GOOG', 'Ridge', 0)"
        )
    assert raised.value.diag.column_name == "horizon"
    assert clean.execute(
        "SELECT (SELECT count(*) FROM models) + (SELECT count(*) FROM procrastinate_jobs)"
        " + (SELECT count(*) FROM training_requests)"
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("columns", "field", "words"),
    [
        ({"symbol": None}, "symbol", "must not be null"),
        ({"symbol": "AAPL", "horizon": 0}, "horizon", "between 1 and 1000"),
        (
            {"symbol": "AAPL", "target_col": "vwap"},
            "target_col",
            "'vwap' is not one of open, high, low, close",
        ),
        ({"symbol": "AAPL", "target_transform": "log"}, "target_transform", "is not one of"),
        ({"symbol": "AAPL", "algorithm": "SVM"}, "algorithm", "'SVM' is not one of"),
        (
            {"symbol": "AAPL", "hyperparameters": json.dumps({"max_depht": 3})},
            "hyperparameters.max_depht",
            "unknown parameter for RandomForest",
        ),
        (
            {"symbol": "AAPL", "hyperparameters": json.dumps({"max_depth": -3})},
            "hyperparameters.max_depth",
            "expected integer >= 1 or null",
        ),
        (
            {"symbol": "AAPL", "hyperparameters": json.dumps({"criterion": "gini"})},
            "hyperparameters.criterion",
            "expected one of",
        ),
        ({"symbol": "AAPL", "features": ["ret_1", "moon_phase"]}, "features", "unknown moon_phase"),
        ({"symbol": "AAPL", "features": []}, "features", "at least one feature"),
        ({"symbol": "AAPL", "train_window": 60, "cv_folds": 10}, "train_window", "at least"),
        ({"symbol": "AAPL", "parent_model_id": 999999}, "parent_model_id", "no model with id 999999"),
        ({"symbol": "AAPL", "timeframe": "daily"}, "timeframe", "is not a timeframe"),
        ({"symbol": "AAPL", "execution_lag": -1}, "execution_lag", "between 0 and 100"),
        *(
            ({"symbol": "AAPL", "evaluation": json.dumps(evaluation)}, field, words)
            for evaluation, field, words in (
                (
                    {"kind": "walkforward"},
                    "evaluation.kind",
                    "'walkforward' is not one of holdout, walk_forward",
                ),
                ({"kind": "walk_forward", "refit_every": 0}, "evaluation.refit_every", "between 1 and 10000"),
                (
                    {"kind": "walk_forward", "refit_every": 2.5},
                    "evaluation.refit_every",
                    "must be an integer",
                ),
                (
                    {"kind": "walk_forward", "window": "rolling"},
                    "evaluation.window",
                    "not one of expanding, sliding",
                ),
                (
                    {"kind": "walk_forward", "every": 5},
                    "evaluation.every",
                    "unknown setting for walk_forward",
                ),
                ({"kind": "walk_forward", "start": "soon"}, "evaluation.start", "is not a timestamp"),
                # AAPL's bars start in 2000: 250 of warm-up and 1,000 of training come first.
                ({"kind": "walk_forward", "start": "2000-06-01"}, "evaluation.start", "enough history"),
                ({"kind": "walk_forward", "start": "2030-01-01"}, "evaluation.start", "after data_end"),
                (
                    {"kind": "holdout", "refit_every": 5},
                    "evaluation.refit_every",
                    "unknown setting for holdout",
                ),
            )
        ),
        ({"symbol": "AAPL", "execution_lag": 101}, "execution_lag", "between 0 and 100"),
        (
            {"symbol": "AAPL", "train_window": 72, "horizon": 2, "execution_lag": 1},
            "train_window",
            "(cv_folds + 1) x (execution_lag + horizon + 10) = 78 bars",
        ),
    ],
)
def test_bad_insert_fails_naming_the_field_and_changes_nothing(clean, columns, field, words):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        insert_request(clean, columns)
    assert raised.value.diag.column_name == field
    assert f"invalid training request: {field}: " in raised.value.diag.message_primary
    assert words in raised.value.diag.message_primary
    assert (
        clean.execute(
            "SELECT (SELECT count(*) FROM models) + (SELECT count(*) FROM procrastinate_jobs)"
        ).fetchone()[0]
        == 0
    )


def test_fingerprint_is_canonical(clean):
    base = {
        "symbol": "AAPL",
        "algorithm": "RandomForest",
        **{k: v for k, v in FAST.items() if k != "algorithm"},
    }
    _, explicit, _ = insert_request(
        clean,
        {
            **base,
            "hyperparameters": json.dumps(
                {"n_estimators": 100.0, "max_depth": None}
            ),  # defaults, written oddly
            "features": [
                "volume_z_20",
                "ret_1",
                "ret_2",
                "ret_5",
                "ret_10",
                "ret_20",
                "vol_5",
                "vol_20",
                "ma_ratio_5",
                "ma_ratio_20",
                "ma_ratio_50",
                "rsi_14",
                "hl_range",
                "ret_1",
            ],
            "timeframe": "1d",
            "horizon": 1,
        },
    )
    _, implicit, deduplicated = insert_request(clean, base)
    assert implicit == explicit and deduplicated
    _, other, _ = insert_request(clean, {**base, "hyperparameters": json.dumps({"n_estimators": 101})})
    assert other != explicit


def test_execution_lag_is_fingerprinted_and_lag_0_is_the_label_every_model_had_before(clean):
    """The default lag (1) is part of the spec and its fingerprint (spec_version 2); lag 0, the label
    measured from the signal's close as before the field existed, is written exactly as those specs
    were, so it hashes as they did (tests/test_schema.py: the models made before keep their
    fingerprints)."""
    base = {"symbol": "AAPL", **FAST}
    default = clean.execute(
        "SELECT models.spec FROM models WHERE id = %s", (insert_request(clean, base)[0],)
    ).fetchone()[0]
    assert default["execution_lag"] == 1 and default["spec_version"] == 2
    model, lag_1, deduplicated = insert_request(clean, {**base, "execution_lag": 1})
    assert deduplicated
    _, lag_2, _ = insert_request(clean, {**base, "execution_lag": 2})
    lag_0_model, lag_0, _ = insert_request(clean, {**base, "execution_lag": 0})
    assert len({lag_0, lag_1, lag_2}) == 3
    spec = clean.execute("SELECT models.spec FROM models WHERE id = %s", (lag_0_model,)).fetchone()[0]
    assert "execution_lag" not in spec and spec["spec_version"] == 1
    # A retrain or an evolution of such a model keeps its lag.
    request = clean.execute(
        "SELECT sfq_model_request(m) FROM models m WHERE id = ANY(%s) ORDER BY id", ([model, lag_0_model],)
    ).fetchall()
    assert [r[0]["execution_lag"] for r in request] == [1, 0]


def test_a_walk_forward_is_fingerprinted_with_every_setting_and_holdout_as_before(clean):
    base = {"symbol": "AAPL", **FAST}
    holdout, _, _ = insert_request(clean, {**base, "evaluation": json.dumps({"kind": "holdout"})})
    assert insert_request(clean, base)[0] == holdout  # the default, and not in the spec
    walk, fingerprint, _ = insert_request(clean, {**base, "evaluation": json.dumps({"kind": "walk_forward"})})
    spelled_out = {"kind": "walk_forward", "refit_every": 21, "window": "expanding", "start": None}
    assert insert_request(clean, {**base, "evaluation": json.dumps(spelled_out)})[:3] == (
        walk,
        fingerprint,
        True,
    )
    spec = clean.execute("SELECT models.spec FROM models WHERE id = %s", (walk,)).fetchone()[0]
    assert spec["evaluation"] == spelled_out
    spec_of = "SELECT m.spec FROM models m WHERE id = %s"
    assert "evaluation" not in clean.execute(spec_of, (holdout,)).fetchone()[0]
    sliding = {**spelled_out, "window": "sliding", "start": "2010-01-04T00:00:00+00:00"}
    other, _, _ = insert_request(clean, {**base, "evaluation": json.dumps(sliding)})
    stored = clean.execute("SELECT m.spec->'evaluation' FROM models m WHERE id = %s", (other,)).fetchone()[0]
    assert stored == {**sliding, "start": "2010-01-04T00:00:00.000000Z"} and other != walk


def test_a_models_spec_is_rebuilt_from_its_columns_and_hashes_to_its_fingerprint(clean):
    """models.spec is a function of the row (0031): the columns and spec_extra, which keeps only the fields
    no column holds. Every kind of request gets that compact row, and its spec is the one hashed."""
    base = {"symbol": "AAPL", **FAST}
    requests = [
        base,
        {**base, "execution_lag": 0},
        {**base, "run": 3, "lockbox_start": "2012-06-01", "timeout_s": 60},
        {**base, "evaluation": json.dumps({"kind": "walk_forward", "refit_every": 10})},
        {**base, "algorithm": "ElasticNet", "alpha_grid": [0.1, 1.0], "l1_ratio_grid": [0.5]},
        {**base, "context_symbols": ["MSFT"], "regime_configs": json.dumps([{"kind": "trend"}])},
        {**base, "hyperparameters": json.dumps({"alpha": 2.50}), "features": ["ret_1", "rsi_14"]},
        {**base, "symbol": "msft ", "timeframe": "1d", "data_end": "2011-03-04 15:30:00-05", "horizon": 3},
    ]
    ids = [insert_request(clean, request)[0] for request in requests]
    # The other ways in: a sweep, a forced retrain, an evolution, a symbol without bars (data_end NULL),
    # and a client whose floats print rounded (extra_float_digits 0) hashing the same grid as the others.
    clean.execute(
        "SELECT sfq_submit_sweep(%s, %s)", (Jsonb({"symbol": "MSFT", **FAST}), Jsonb({"horizon": [2, 4]}))
    )
    clean.execute("SELECT sfq_retrain(%s, true)", (ids[0],))
    clean.execute("""SELECT sfq_evolve(%s, '{"horizon": 5}')""", (ids[1],))
    insert_request(clean, {"symbol": "ZZZZ", **FAST})
    grid = {**base, "algorithm": "Lasso", "alpha_grid": [0.30000000000000004, 1.0]}
    clean.execute("SET extra_float_digits = 0")
    rounded = insert_request(clean, grid)
    clean.execute("RESET extra_float_digits")
    assert insert_request(clean, grid) == (*rounded[:2], True)
    clean.execute("SET extra_float_digits = 0")  # and read back the same, however this client prints floats
    rows = clean.execute(
        "SELECT spec_extra, encode(sha256(convert_to(m.spec::text, 'UTF8')), 'hex') = fingerprint"
        " FROM models m ORDER BY id"
    ).fetchall()
    clean.execute("RESET extra_float_digits")
    assert len(rows) == len(requests) + 6
    assert clean.execute("SELECT count(*) FROM models WHERE data_end IS NULL").fetchone()[0] == 1
    for extra, hashes_to_fingerprint in rows:
        assert hashes_to_fingerprint
        assert set(extra) <= {"spec_version", "execution_lag", "bars_revision", "lockbox_start", "evaluation"}
    assert [sorted(extra) for extra, _ in rows[:4]] == [
        ["execution_lag", "spec_version"],
        [],
        ["execution_lag", "lockbox_start", "spec_version"],
        ["evaluation", "execution_lag", "spec_version"],
    ]


def test_a_spec_kept_whole_is_read_back_whole(clean):
    """A model made before 0031 keeps the spec it hashed, whole, in spec_extra (it has `symbol`, which the
    fields beside the columns never have): m.spec gives it back as it was, not rebuilt from the columns."""
    whole = {"symbol": "A", "spec_version": 1, "made_by": "an older sfq"}
    model, _, _ = insert_request(clean, {"symbol": "AAPL", **FAST})
    clean.execute("UPDATE models SET spec_extra = %s WHERE id = %s", (json.dumps(whole), model))
    assert clean.execute("SELECT m.spec FROM models m WHERE id = %s", (model,)).fetchone()[0] == whole


def test_a_revised_bar_makes_the_same_request_train_again(clean):
    """Changing, deleting or backfilling a bar of the symbol (or of a context symbol) revises its bars:
    the same request then has a new fingerprint (its spec records the revisions). Re-importing identical
    bars, or appending new ones after data_end, is no revision."""
    revisions = "SELECT symbol, revision FROM bar_revisions WHERE timeframe = '1d' ORDER BY symbol"
    clean.execute("DELETE FROM bar_revisions")
    request = {"symbol": "GOOG", **FAST, "data_end": "2010-06-30"}
    first, fingerprint, _ = insert_request(clean, request)
    bar = (
        "SELECT ts, close FROM bars WHERE symbol = 'GOOG' AND timeframe = '1d' AND ts < '2010-01-01' LIMIT 1"
    )
    ts, close = clean.execute(bar).fetchone()
    original = clean.execute(
        "SELECT open, high, low, close, volume FROM bars"
        " WHERE symbol = 'GOOG' AND timeframe = '1d' AND ts = %s",
        (ts,),
    ).fetchone()
    clean.execute("UPDATE bars SET close = close WHERE symbol = 'GOOG' AND ts = %s", (ts,))  # no change
    assert clean.execute(revisions).fetchall() == []
    assert insert_request(clean, request)[:3] == (first, fingerprint, True)

    clean.execute("UPDATE bars SET close = %s, high = greatest(high, %s) WHERE symbol = 'GOOG' AND ts = %s",
                  (close * 1.01, close * 1.01, ts))  # fmt: skip
    assert clean.execute(revisions).fetchall() == [("GOOG", 1)]
    second, revised, deduplicated = insert_request(clean, request)
    assert (second != first, revised != fingerprint, deduplicated) == (True, True, False)
    spec = clean.execute("SELECT models.spec FROM models WHERE id = %s", (second,)).fetchone()[0]
    assert spec["bars_revision"] == {"GOOG": 1}
    assert insert_request(clean, request)[:3] == (second, revised, True)  # stable until the next revision

    clean.execute("DELETE FROM bars WHERE symbol = 'GOOG' AND ts = %s", (ts,))
    clean.execute(
        "INSERT INTO bars SELECT 'GOOG', '1d', %s, open, high, low, close, volume FROM bars"
        " WHERE symbol = 'GOOG' AND timeframe = '1d' ORDER BY ts LIMIT 1",
        (ts,),
    )  # a backfill
    appended = "INSERT INTO bars VALUES ('GOOG', '1d', '2030-01-02', 10, 11, 9, 10, 100)"
    clean.execute(appended)
    assert clean.execute(revisions).fetchall() == [("GOOG", 3)]
    context = {"symbol": "IBM", **FAST, "data_end": "2010-06-30", "context_symbols": ["GOOG"]}
    spec_of = "SELECT models.spec->'bars_revision' FROM models WHERE id = %s"
    assert clean.execute(spec_of, (insert_request(clean, context)[0],)).fetchone()[0] == {"GOOG": 3}
    # Leave the bars as found (the other tests share them).
    clean.execute("DELETE FROM bars WHERE symbol = 'GOOG' AND ts = '2030-01-02'")
    clean.execute(
        "UPDATE bars SET open = %s, high = %s, low = %s, close = %s, volume = %s"
        " WHERE symbol = 'GOOG' AND timeframe = '1d' AND ts = %s",
        (*original, ts),
    )


def test_fingerprint_ignores_client_time_zone(clean, database):
    request = {"symbol": "AAPL", **FAST, "data_end": "2012-06-01T00:00:00+00:00"}
    _, utc, _ = insert_request(clean, request)
    with psycopg.connect(database, autocommit=True) as tokyo:
        tokyo.execute("SET TimeZone = 'Asia/Tokyo'")
        _, same, deduplicated = insert_request(tokyo, request)
    assert same == utc and deduplicated


def test_data_end_is_pinned_to_a_bar_and_new_bars_make_a_new_model(clean):
    request = {"symbol": "IBM", **FAST, "data_end": "2012-06-02T12:00:00+00:00"}  # a Saturday
    model_id, fingerprint, _ = insert_request(clean, request)
    data_end = clean.execute("SELECT data_end::date::text FROM models WHERE id = %s", (model_id,)).fetchone()[
        0
    ]
    assert data_end == "2012-06-01"  # snapped to the last bar at or before the requested end
    _, friday, deduplicated = insert_request(clean, {**request, "data_end": "2012-06-01T00:00:00+00:00"})
    assert friday == fingerprint and deduplicated

    latest_id, latest, _ = insert_request(clean, {"symbol": "IBM", **FAST})
    clean.execute(
        "INSERT INTO bars SELECT symbol, timeframe, ts + interval '3 days', open, high, low, close, volume"
        " FROM bars WHERE symbol = 'IBM' AND ts = (SELECT max(ts) FROM bars WHERE symbol = 'IBM')"
    )
    try:
        newer_id, newer, deduplicated = insert_request(clean, {"symbol": "IBM", **FAST})
        assert (newer != latest, newer_id != latest_id, deduplicated) == (True, True, False)
    finally:
        clean.execute("DELETE FROM bars WHERE symbol = 'IBM' AND ts > '2013-03-01T12:00:00Z'")


def test_failed_model_may_be_submitted_again(clean):
    model_id, fingerprint, _ = insert_request(clean, {"symbol": "GOOG", **FAST})
    clean.execute("UPDATE models SET status = 'failed', error = 'boom' WHERE id = %s", (model_id,))
    again_id, again, deduplicated = insert_request(clean, {"symbol": "GOOG", **FAST})
    assert (again, deduplicated) == (fingerprint, False)
    assert again_id != model_id
    assert len(jobs(clean)) == 2


def test_symbol_without_bars_is_accepted_with_no_data_end(clean):
    model_id, _, _ = insert_request(clean, {"symbol": "NOBARS", **FAST})
    assert clean.execute("SELECT data_end FROM models WHERE id = %s", (model_id,)).fetchone()[0] is None


def test_json_submit_reports_wrong_types_by_field(clean):
    for request, field in [
        ({"symbol": "AAPL", "horizon": "x"}, "horizon"),
        ({"symbol": "AAPL", "horizon": 1.5}, "horizon"),
        ({"symbol": 5}, "symbol"),
        ({"symbol": "AAPL", "features": "ret_1"}, "features"),
        ({"symbol": "AAPL", "features": [1]}, "features"),
        ({"symbol": "AAPL", "data_end": "yesterday-ish"}, "data_end"),
        ({"symbol": "AAPL", "colour": "red"}, "colour"),
    ]:
        with pytest.raises(Rejected) as raised:
            gateway.run(clean, gateway.submit(request, "http"))
        assert raised.value.field == field, request
    assert clean.execute("SELECT count(*) FROM training_requests").fetchone()[0] == 0


def test_same_request_over_http_cli_and_sql_has_one_fingerprint_and_trains_once(clean, api, database):
    request = {"symbol": "AAPL", **FAST, "hyperparameters": {"alpha": 2}}
    response = api.post("/train", json=request)
    assert response.status_code == 201, response.text
    http = response.json()

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "queue_app.cli",
            "submit",
            "--symbol",
            "AAPL",
            "--algorithm",
            "Ridge",
            "--train-window",
            "300",
            "--test-window",
            "60",
            "--param",
            "alpha=2.0",
        ],
        env={"POSTGRES_URL": database, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"model {http['model_id']} fingerprint {http['fingerprint']} (deduplicated" in cli.stdout

    model_id, fingerprint, deduplicated = insert_request(
        clean, {"symbol": "AAPL", **FAST, "hyperparameters": json.dumps({"alpha": 2.0})}
    )
    assert (model_id, fingerprint, deduplicated) == (http["model_id"], http["fingerprint"], True)
    assert clean.execute("SELECT via, deduplicated FROM training_requests ORDER BY id").fetchall() == [
        ("http", False),
        ("cli", True),
        ("sql", True),
    ]
    assert len(jobs(clean)) == 1


class Listener:
    """A LISTEN on Procrastinate's channels of the training queue, and on `channels` (sleeping workers'
    own, 0028): what one enqueue notified."""

    def __init__(self, url: str, channels: Iterable[str] = ()):
        self.conn = psycopg.connect(url, autocommit=True)
        own = ("procrastinate_any_queue_v1", "procrastinate_queue_v1#training", "sfq_test_end")
        for channel in (*own, *channels):
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def heard(self, conn: psycopg.Connection) -> list[tuple[str, dict]]:
        conn.execute("NOTIFY sfq_test_end")  # delivered after every notification committed before it
        heard = []
        for note in self.conn.notifies(timeout=10):
            if note.channel == "sfq_test_end":
                return sorted(heard)
            heard.append((note.channel, json.loads(note.payload)))
        raise AssertionError(f"no end of notifications after {heard}")


def enqueue(conn: psycopg.Connection, count: int) -> None:
    conn.execute(
        "INSERT INTO training_requests (symbol, algorithm, hyperparameters)"
        " SELECT 'AAPL', 'Ridge', jsonb_build_object('alpha', random()) FROM generate_series(1, %s)",
        (count,),
    )


_workers: weakref.WeakKeyDictionary[psycopg.Connection, int] = weakref.WeakKeyDictionary()


def worker_id(conn: psycopg.Connection) -> int:
    """The Procrastinate worker this session fetches as (registered at its first fetch)."""
    if conn not in _workers:
        (_workers[conn],) = conn.execute(
            "SELECT worker_id FROM procrastinate_register_worker_v1()"
        ).fetchone()
    return _workers[conn]


def fetch(
    conn: psycopg.Connection, channel: str | None = None, queues: Sequence[str] = ("training",)
) -> tuple[int | None, bool | None]:
    """A worker's fetch (sfq_fetch_job), on the training queue unless told: the job's id, and whether it is
    asleep. `channel`: where it is woken alone (its daemon's); without, as a daemon from before 0028."""
    return conn.execute(
        "SELECT (job).id, asleep FROM sfq_fetch_job(%s::varchar[], %s, %s)",
        (list(queues), worker_id(conn), channel),
    ).fetchone()


def notified(job_id: int) -> list[tuple[str, dict]]:
    payload = {"type": "job_inserted", "job_id": job_id}
    return [("procrastinate_any_queue_v1", payload), ("procrastinate_queue_v1#training", payload)]


def newest_job(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT max(id) FROM procrastinate_jobs").fetchone()[0]


def test_enqueues_notify_once_a_transaction_and_only_while_a_worker_may_be_asleep(clean, database):
    """sfq_wake_sleepers (queue.sql) in place of Procrastinate's notification per job: a notifying
    transaction commits only after the previous one's commit, so each enqueue notifying serialised them."""
    listener = Listener(database)
    with listener.conn, psycopg.connect(database, autocommit=True) as worker:
        enqueue(clean, 3)  # no worker asleep: no notification
        assert listener.heard(clean) == []
        assert [fetch(worker) for _ in range(5)] == [
            (1, False),
            (2, False),
            (3, False),
            (None, True),
            (None, True),
        ]
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        assert worker.execute(held).fetchone()[0] == 2  # asleep and sleeper once, however often it fetches

        enqueue(clean, 3)  # a worker asleep: one notification per channel for the statement's three jobs
        assert listener.heard(clean) == notified(newest_job(clean) - 2)
        with clean.transaction():  # and one for the transaction's statements
            enqueue(clean, 1)
            first = newest_job(clean)
            enqueue(clean, 1)
        assert listener.heard(clean) == notified(first)

        enqueue(worker, 1)  # from the session of a worker asleep (its rescues): its own lock hides from it
        assert listener.heard(clean) == notified(newest_job(clean))

        assert fetch(worker) == (4, False)  # a job fetched: the worker is no longer asleep
        enqueue(clean, 1)
        assert listener.heard(clean) == []
        assert worker.execute(held).fetchone()[0] == 0


def test_only_the_queues_of_sfqs_daemons_skip_their_notification(clean, database):
    """Only sfq's daemons register asleep: a job of any other queue (a plain Procrastinate worker's, as
    the no-op benchmark runs one) notifies whether or not a worker is asleep."""
    listener = Listener(database)
    with listener.conn:
        for queue in (TRAINING_QUEUE, PREDICTION_QUEUE, SIMULATION_QUEUE, STUDY_QUEUE, "bench_bare"):
            (job_id,) = clean.execute(
                "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s, 'noop', 0, NULL, NULL, '{}', NULL)"
                "::procrastinate_job_to_defer_v1]))",
                (queue,),
            ).fetchone()
            heard = [channel for channel, payload in listener.heard(clean) if payload["job_id"] == job_id]
            assert heard == ([] if queue != "bench_bare" else ["procrastinate_any_queue_v1"]), queue


def test_a_worker_of_several_queues_sleeps_on_each_once_and_wakes_from_each(clean, database):
    """The daemon's side worker fetches from three queues: registered asleep on each, once; a job of any of
    them is notified while it sleeps, and fetching it wakes it from all three."""
    side = ("prediction", "simulation", "study")
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    listener = Listener(database)
    with listener.conn, psycopg.connect(database, autocommit=True) as worker:
        assert [fetch(worker, queues=side) for _ in range(2)] == [(None, True), (None, True)]
        assert worker.execute(held).fetchone()[0] == 4  # asleep on each queue, and sleeper
        (job_id,) = clean.execute(
            "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW('simulation', 'noop', 0, NULL, NULL, '{}',"
            " NULL)::procrastinate_job_to_defer_v1]))"
        ).fetchone()
        assert [channel for channel, _ in listener.heard(clean)] == ["procrastinate_any_queue_v1"]
        assert fetch(worker, queues=side) == (job_id, False)
        assert worker.execute(held).fetchone()[0] == 0


def waiting_at_the_barrier(conn: psycopg.Connection, pid: int) -> bool:
    return conn.execute(
        "SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()[0]


def test_a_worker_falling_asleep_waits_for_an_enqueue_that_did_not_notify(clean, database):
    """The race that left a worker asleep beside a waiting job: its fetch before the enqueue's commit
    found nothing. Registered asleep, it waits at the barrier for that commit, then fetches the job; an
    enqueue that comes meanwhile notifies. (The decision is made at commit; made immediate here, so that
    the commit can be held back.)"""
    listener = Listener(database)
    with (
        listener.conn,
        psycopg.connect(database, autocommit=True) as worker,
        psycopg.connect(database, autocommit=True) as enqueuer,
        ThreadPoolExecutor(1) as pool,
    ):
        with enqueuer.transaction():
            enqueuer.execute("SET CONSTRAINTS sfq_jobs_wake_sleepers IMMEDIATE")
            enqueue(enqueuer, 1)  # no worker asleep yet: decided, no notification; barrier held
            skipped = newest_job(enqueuer)
            falling_asleep = pool.submit(fetch, worker)
            deadline = time.monotonic() + 10
            while not waiting_at_the_barrier(clean, worker.info.backend_pid):
                assert time.monotonic() < deadline and not falling_asleep.done(), "no wait at the barrier"
                time.sleep(0.01)
            enqueue(clean, 1)  # meanwhile, and committed: the waiting worker counts as asleep
            assert listener.heard(clean) == notified(newest_job(clean))
        assert falling_asleep.result(timeout=10) == (skipped, False)
        assert listener.heard(clean) == []


def test_a_worker_waits_at_the_barrier_at_most_a_second_then_fetches_again(clean, database):
    with psycopg.connect(database, autocommit=True) as worker, psycopg.connect(database) as enqueuer:
        enqueuer.execute("SET CONSTRAINTS sfq_jobs_wake_sleepers IMMEDIATE")
        enqueue(enqueuer, 1)
        start = time.monotonic()
        assert fetch(worker) == (None, None)  # not asleep: its daemon fetches again at once
        assert 1 <= time.monotonic() - start < 5
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        assert worker.execute(held).fetchone()[0] == 0
        enqueuer.commit()
        assert fetch(worker) == (newest_job(clean), False)


def test_a_fetch_waits_on_a_row_for_as_long_as_it_takes_only_the_barrier_is_timed(clean, database):
    """A fetch that takes a job writes the job counters' row of its session (sql/schema/counts.sql), which
    a fold going on in another transaction may hold: the fetch waits for it. The second's lock timeout of
    the barrier applied to the whole fetch, and a fold in a long transaction stopped a worker (the fleet
    benchmark at 500 daemons: "canceling statement due to lock timeout")."""
    waiting = (
        "SELECT wait_event_type = 'Lock' AND now() - query_start > interval '1.5 s'"
        " FROM pg_stat_activity WHERE pid = %s"
    )
    with (
        psycopg.connect(database, autocommit=True) as worker,
        psycopg.connect(database) as folder,
        ThreadPoolExecutor(1) as pool,
    ):
        enqueue(clean, 2)
        assert fetch(worker) == (newest_job(clean) - 1, False)  # the worker's session has a counters' row
        assert folder.execute("SELECT sfq_fold_counts()").fetchone() == (True,)  # and the fold holds it
        fetching = pool.submit(fetch, worker)
        deadline = time.monotonic() + 60
        while not clean.execute(waiting, (worker.info.backend_pid,)).fetchone()[0]:
            assert time.monotonic() < deadline and not fetching.done(), fetching.result()
            time.sleep(0.05)
        folder.commit()
        assert fetching.result(timeout=30) == (newest_job(clean), False)


# One sleeper woken a job (0028): each listening worker registers asleep with its daemon's own channel.
CHANNELS = [f"sfq_wake_v1#test{i}" for i in range(3)]


def woken(job_id: int, channel: str) -> tuple[str, dict]:
    return (channel, {"type": "job_inserted", "job_id": job_id, "queue": "training"})


def fetch_each(conns: list[psycopg.Connection]) -> list[tuple[int | None, bool | None]]:
    """Each sleeper's fetch, with its channel."""
    return [fetch(conn, channel) for conn, channel in zip(conns, CHANNELS, strict=True)]


def rows(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    return conn.execute("SELECT worker_id, queue_name, channel FROM sfq_sleepers ORDER BY 1, 2").fetchall()


@pytest.fixture
def sleepers(clean, database) -> Iterator[tuple[Listener, list[psycopg.Connection]]]:
    """Three workers of the training queue asleep, each with its own channel (CHANNELS), and a LISTEN on
    those and on Procrastinate's."""
    listener = Listener(database, CHANNELS)
    conns = [psycopg.connect(database, autocommit=True) for _ in CHANNELS]
    try:
        assert fetch_each(conns) == [(None, True)] * 3
        assert rows(clean) == [
            (worker_id(conn), "training", c) for conn, c in zip(conns, CHANNELS, strict=True)
        ]
        yield listener, conns
    finally:
        for conn in [listener.conn, *conns]:
            conn.close()


def test_one_job_wakes_one_sleeper_on_its_own_channel_not_all(clean, sleepers):
    """Procrastinate's channels reach every listening daemon (a herd of fetches at each job); one job now
    notifies one sleeper's channel, and the others sleep on."""
    listener, conns = sleepers
    enqueue(clean, 1)
    first = newest_job(clean)
    heard = listener.heard(clean)
    assert len(heard) == 1 and heard[0] in [woken(first, channel) for channel in CHANNELS]
    chosen = CHANNELS.index(heard[0][0])
    assert len(rows(clean)) == 2  # its row went with the notification
    assert fetch(conns[chosen], CHANNELS[chosen]) == (first, False)  # it fetches the job
    assert len(rows(clean)) == 2
    enqueue(clean, 1)  # the next job, the next sleeper: never the one now busy
    (second,) = listener.heard(clean)
    assert second[0] != CHANNELS[chosen] and second == woken(newest_job(clean), second[0])


def test_a_woken_worker_that_finds_nothing_registers_again(clean, sleepers):
    """Woken, but the job went to a worker that was not asleep (a busy one fetching as its job ended): the
    woken worker fetches nothing and writes its row again, to be woken by the next job."""
    listener, conns = sleepers
    enqueue(clean, 1)
    ((channel, payload),) = listener.heard(clean)
    with psycopg.connect(clean.info.dsn, autocommit=True) as busy:
        assert fetch(busy) == (payload["job_id"], False)  # not registered (it had a job): takes it
    woken_worker = conns[CHANNELS.index(channel)]
    assert fetch(woken_worker, channel) == (None, True)
    assert len(rows(clean)) == 3 and (worker_id(woken_worker), "training", channel) in rows(clean)
    assert listener.heard(clean) == []  # nothing notified by registering again


def test_two_concurrent_enqueues_wake_two_different_sleepers(clean, database, sleepers):
    """The first enqueue's sleeper row is taken (FOR UPDATE) until it commits: a second one that commits
    meanwhile skips it and wakes another sleeper."""
    listener, _ = sleepers
    with psycopg.connect(database) as first:
        first.execute("SET CONSTRAINTS sfq_jobs_wake_sleepers IMMEDIATE")  # decided now, committed later
        enqueue(first, 1)
        first_job = newest_job(first)
        enqueue(clean, 1)  # decides and commits while the first holds its sleeper's row
        second_job = newest_job(clean)
        ((second_channel, _),) = listener.heard(clean)
        first.commit()
    ((first_channel, _),) = listener.heard(clean)
    assert first_channel != second_channel
    assert {first_channel, second_channel} <= set(CHANNELS)
    assert listener.heard(clean) == []
    assert [r[2] for r in rows(clean)] == [c for c in CHANNELS if c not in (first_channel, second_channel)]
    assert first_job != second_job


def test_a_dead_sleepers_row_is_passed_over_and_strands_no_job(clean, database, sleepers):
    """A killed daemon leaves its rows; its session's "sleeper" lock went with it: the row is deleted and the
    next sleeper woken. With no live sleeper left, nobody holds "asleep": no notification is needed."""
    listener, conns = sleepers
    dead = conns[0]
    dead_pid, dead_worker = dead.info.backend_pid, worker_id(dead)
    clean.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
    deadline = time.monotonic() + 10
    while clean.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (dead_pid,)).fetchone()[0]:
        assert time.monotonic() < deadline, "the terminated session is still there"
        time.sleep(0.01)
    assert (dead_worker, "training", CHANNELS[0]) in rows(clean)  # left behind
    for _ in range(2):  # whatever order the rows are tried in, the dead one is never woken
        enqueue(clean, 1)
        ((channel, payload),) = listener.heard(clean)
        assert channel != CHANNELS[0] and payload["job_id"] == newest_job(clean)
        # The live worker woken fetches the job: it waits for no poll.
        assert fetch(conns[CHANNELS.index(channel)], channel) == (newest_job(clean), False)
        if not any(r[0] == dead_worker for r in rows(clean)):
            break
    else:
        raise AssertionError("the dead sleeper's row was never passed over")


def test_a_bulk_insert_wakes_as_many_sleepers_as_it_has_jobs_and_no_more(clean, sleepers):
    """One statement of two jobs wakes two sleepers; one of five wakes the last sleeper and notifies no
    more (the rest are left to the workers woken, and a worker falling asleep meanwhile would wait at
    the barrier for this commit)."""
    listener, conns = sleepers
    enqueue(clean, 2)
    two = listener.heard(clean)
    assert len(two) == 2 and len({channel for channel, _ in two}) == 2
    assert {payload["job_id"] for _, payload in two} == {newest_job(clean) - 1, newest_job(clean)}
    assert all(payload["queue"] == "training" for _, payload in two)
    (last,) = [c for c in CHANNELS if c not in {channel for channel, _ in two}]
    assert [r[2] for r in rows(clean)] == [last]
    enqueue(clean, 5)
    assert listener.heard(clean) == [woken(newest_job(clean) - 4, last)]
    assert rows(clean) == []
    # Every woken worker fetches a job (and, after it, the next: Procrastinate's loop); nothing notified.
    assert [asleep for _, asleep in fetch_each(conns)] == [False] * 3
    assert fetch_each(conns) == [
        (newest_job(clean) - 3, False),
        (newest_job(clean) - 2, False),
        (newest_job(clean) - 1, False),
    ]
    assert listener.heard(clean) == []


def test_a_worker_registers_its_own_channel_over_an_old_row_of_its_id(clean, database, sleepers):
    """Worker ids can begin again (a restored database, the tests' RESTART IDENTITY): a row left by a dead
    daemon under the same id gets the live daemon's channel, or every wake would go to the dead one."""
    listener, conns = sleepers
    reused = worker_id(conns[0])
    conns[0].close()  # its session and locks gone, its row left
    with psycopg.connect(database, autocommit=True) as again:
        _workers[again] = reused
        assert fetch(again, "sfq_wake_v1#again") == (None, True)
        assert (reused, "training", "sfq_wake_v1#again") in rows(clean)
        assert len(rows(clean)) == 3


def round_now(conn: psycopg.Connection, workers: list[int]) -> list[tuple[str, dict]]:
    """A daemon's beat (sfq_beat) on `conn`, as the first since the period: the fleet's round's rows (not
    the fleet's size, which every beat reads)."""
    conn.execute("UPDATE sfq_fleet_round SET ran_at = now() - interval '1 hour'")
    beat = "SELECT kind, what FROM sfq_beat(%s, 'host', 1, 1, 20, 3, 60) WHERE kind <> 'fleet'"
    return conn.execute(beat, (workers,)).fetchall()


def test_the_fleets_round_wakes_a_sleeper_for_a_job_that_came_due_unheard(clean, database, sleepers):
    """A retry's or a scheduled job's time comes with no insert, so no enqueue wakes anyone: the fleet's
    round does (a sleeper a due job), and a listening worker's poll is only the last net. The round may run
    on a sleeping worker's own session (a daemon's queue connection): that worker is asleep, not gone."""
    listener, conns = sleepers
    enqueue(clean, 2)  # two sleepers woken, and busy with the jobs: one left asleep
    busy = [CHANNELS.index(channel) for channel, _ in listener.heard(clean)]
    for i in busy:
        assert fetch(conns[i], CHANNELS[i])[1] is False
    (last,) = [i for i in range(3) if i not in busy]
    with clean.transaction():
        enqueue(clean, 1)
        later = newest_job(clean)
        clean.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 hour' WHERE id = %s", (later,)
        )
    assert listener.heard(clean) == [woken(later, CHANNELS[last])]  # woken at its insert, in vain:
    assert fetch(conns[last], CHANNELS[last]) == (None, True)  # not due; asleep again
    own_workers = [worker_id(conns[last]), worker_id(clean)]
    assert round_now(conns[last], own_workers) == []  # nothing due: nobody woken
    assert listener.heard(clean) == []

    clean.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() - interval '1 second' WHERE id = %s", (later,)
    )
    assert listener.heard(clean) == []  # its time came: no insert, no wake
    assert round_now(conns[last], own_workers) == [("woken", {"workers": 1})]
    assert listener.heard(clean) == [woken(later, CHANNELS[last])]
    assert fetch(conns[last], CHANNELS[last]) == (later, False)
    assert round_now(conns[last], own_workers) == []  # nobody asleep now


def test_the_round_leaves_a_job_just_deferred_to_its_own_wake(clean, sleepers):
    """A job deferred now has woken a sleeper, whose fetch may not have come yet: the round wakes nobody
    else for it (a second sleeper would find nothing). Still waiting a round's period later, it went
    unheard (its wake reached a worker that took another job): then the round wakes a sleeper for it."""
    listener, conns = sleepers
    enqueue(clean, 1)
    assert len(listener.heard(clean)) == 1  # its own wake; the woken worker has not fetched yet
    assert round_now(clean, [worker_id(clean)] * 2) == []
    assert listener.heard(clean) == []
    # The next round, a period later (round_now): it was there at the last one, and still waits.
    assert round_now(clean, [worker_id(clean)] * 2) == [("woken", {"workers": 1})]
    assert [payload["job_id"] for _, payload in listener.heard(clean)] == [newest_job(clean)]


def test_the_round_wakes_no_more_sleepers_than_due_jobs_nor_for_a_job_its_lock_holds(clean, sleepers):
    """A due job a sleeper each, up to the jobs there are; a job whose lock a running job holds waits for
    it (procrastinate_fetch_job_v2 would not give it), so nobody is woken for it."""
    listener, conns = sleepers
    with clean.transaction():
        enqueue(clean, 3)
        clean.execute("UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 hour'")
    due = [newest_job(clean) - 2, newest_job(clean) - 1, newest_job(clean)]
    assert len(listener.heard(clean)) == 3  # each sleeper woken in vain...
    assert fetch_each(conns) == [(None, True)] * 3  # ...and asleep again
    clean.execute("UPDATE procrastinate_jobs SET lock = 'held' WHERE id = %s", (due[2],))
    clean.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status)"
        " VALUES ('elsewhere', 'running', 'held', '{}', 'doing')"
    )
    clean.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = ANY(%s)", (due,))  # due
    assert round_now(clean, [worker_id(clean)] * 2) == [("woken", {"workers": 2})]
    assert sorted(payload["job_id"] for _, payload in listener.heard(clean)) == due[:2]
    assert len(rows(clean)) == 1
