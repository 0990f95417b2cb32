"""Every fingerprint field at the way in: changing it changes the fingerprint, equivalent spellings do
not, and bad values are refused with an error naming the field (and nothing is enqueued).

What each field does to training is in tests/test_training.py (pure computation) and, end to end
through a real worker, in test_fields_reach_the_trainer below.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import psycopg
import pytest

from tests.conftest import wait_for_models

BASE = {"symbol": "AAPL", "algorithm": "ElasticNet", "train_window": 300, "test_window": 60}


def submit(conn, **fields) -> dict:
    row = conn.execute(
        "SELECT model_id, fingerprint, deduplicated FROM sfq_submit(%s::jsonb)",
        (json.dumps({**BASE, **fields}),),
    ).fetchone()
    return {"model_id": row[0], "fingerprint": row[1], "deduplicated": row[2]}


def model(conn, model_id: int) -> dict:
    return conn.execute("SELECT models.spec FROM models WHERE id = %s", (model_id,)).fetchone()[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("symbol", "MSFT"),
        ("target_col", "high"),
        ("target_transform", "pct_change"),
        ("horizon", 2),
        ("algorithm", "Ridge"),
        ("hyperparameters", {"alpha": 0.5}),
        ("features", ["ret_1", "vol_20"]),
        ("train_window", 301),
        ("test_window", 61),
        ("data_end", "2012-01-03T00:00:00Z"),
        ("cv_folds", 3),
        ("cv_strategy", "sliding"),
        ("cv_strategy", "purged"),
        ("context_symbols", ["MSFT"]),
        ("alpha_grid", [0.1, 1.0]),
        ("l1_ratio_grid", [0.2, 0.8]),
        ("regime_configs", [{"kind": "volatility"}]),
        ("regime_configs", [{"kind": "trend", "mode": "split"}]),
        ("run", 2),
        ("execution_lag", 2),
        ("evaluation", {"kind": "walk_forward"}),
        ("evaluation", {"kind": "walk_forward", "refit_every": 5}),
    ],
)
def test_each_field_changes_the_fingerprint(clean, field, value):
    base = submit(clean)
    changed = submit(clean, **{field: value})
    assert not changed["deduplicated"] and changed["fingerprint"] != base["fingerprint"]
    assert submit(clean, **{field: value}) == {**changed, "deduplicated": True}


def test_equivalent_spellings_share_a_fingerprint(clean):
    first = submit(
        clean,
        context_symbols=["msft", " IBM", "MSFT"],
        alpha_grid=[1, 0.1, 0.1],
        regime_configs=[{"kind": "trend"}, {"kind": "volatility", "window": 20}],
    )
    same = submit(
        clean,
        context_symbols=["IBM", "MSFT"],
        alpha_grid=[0.1, 1.0],
        regime_configs=[{"kind": "volatility", "mode": "feature"}, {"kind": "trend"}],
    )
    assert same == {**first, "deduplicated": True}
    spec = model(clean, first["model_id"])
    assert spec["context_symbols"] == ["IBM", "MSFT"] and spec["alpha_grid"] == [0.1, 1.0]
    assert "alpha" not in spec["hyperparameters"]  # the grid owns it
    kinds = [config["kind"] for config in spec["regime_configs"]]
    assert sorted(kinds) == ["trend", "volatility"]
    assert all("mode" in config and "window" in config for config in spec["regime_configs"])
    assert submit(clean, run=1)["fingerprint"] == submit(clean)["fingerprint"]  # run 1 is the default


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"cv_strategy": "rolling"}, "cv_strategy", "is not one of expanding, sliding, purged"),
        ({"context_symbols": ["NOSUCH"]}, "context_symbols", "no 1d bars for context symbol NOSUCH"),
        ({"context_symbols": ["AAPL"]}, "context_symbols", "is the model's own symbol"),
        ({"context_symbols": ["bad ticker"]}, "context_symbols", "is not a ticker"),
        ({"context_symbols": [f"S{i}" for i in range(11)]}, "context_symbols", "at most 10"),
        ({"alpha_grid": [-1.0]}, "alpha_grid", "is not valid for ElasticNet"),
        ({"alpha_grid": [0.1], "hyperparameters": {"alpha": 1.0}}, "alpha_grid", "not both"),
        ({"alpha_grid": [0.1], "algorithm": "RandomForest"}, "alpha_grid", "RandomForest has no alpha"),
        ({"l1_ratio_grid": [1.5]}, "l1_ratio_grid", "is not valid for ElasticNet"),
        ({"l1_ratio_grid": [0.5], "algorithm": "Ridge"}, "l1_ratio_grid", "Ridge has no l1_ratio"),
        ({"alpha_grid": [float(i) for i in range(51)]}, "alpha_grid", "at most 50"),
        ({"regime_configs": {"kind": "trend"}}, "regime_configs", "must be a JSON array"),
        ({"regime_configs": ["trend"]}, "regime_configs[0]", 'must be an object with a "kind"'),
        ({"regime_configs": [{"kind": "moon"}]}, "regime_configs[0].kind", "'moon' is not one of"),
        ({"regime_configs": [{"kind": "trend", "span": 3}]}, "regime_configs[0].span", "unknown parameter"),
        ({"regime_configs": [{"kind": "volatility", "window": 0}]}, "regime_configs[0].window", "not valid"),
        ({"regime_configs": [{"kind": "trend", "mode": "both"}]}, "regime_configs[0].mode", "not valid"),
        (
            {"regime_configs": [{"kind": "trend", "mode": "split"}, {"kind": "volatility", "mode": "split"}]},
            "regime_configs",
            "at most one regime",
        ),
        ({"run": 0}, "run", "must be between 1 and 1000000"),
        ({"features": ["ret_1", "future_return"]}, "features", "unknown future_return"),
        ({"hyperparameters": {"alpah": 1}}, "hyperparameters.alpah", "unknown parameter for ElasticNet"),
        ({"train_window": 20}, "train_window", "must be between 50"),
        ({"test_window": 5}, "test_window", "must be between 10"),
        ({"timeframe": "daily"}, "timeframe", "is not a timeframe"),
        ({"target_transform": "log"}, "target_transform", "is not one of"),
        ({"data_end": "soon"}, "data_end", "is not a valid"),
        (
            {"regime_configs": [{"kind": "volatility"}, {"kind": "volatility", "buckets": 5}]},
            "regime_configs",
            "same kind and window",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_field(clean, fields, field, message):
    with pytest.raises(psycopg.DataError) as raised:
        submit(clean, **fields)
    assert raised.value.diag.column_name == field
    assert message in raised.value.diag.message_primary, raised.value.diag.message_primary
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == 0
    assert clean.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


def test_fields_reach_the_trainer(clean, start_worker):
    """Each new field through the database and a real worker: the trainer did what the field says."""
    start_worker(1)
    ids = {
        "context": submit(clean, algorithm="Ridge", context_symbols=["MSFT", "IBM"])["model_id"],
        "grid": submit(clean, alpha_grid=[1e-4, 1e-2, 1.0], l1_ratio_grid=[0.1, 0.9])["model_id"],
        "sliding": submit(clean, algorithm="Ridge", cv_strategy="sliding", cv_folds=4)["model_id"],
        "purged": submit(clean, algorithm="Ridge", cv_strategy="purged", cv_folds=4, horizon=3)["model_id"],
        "regime_feature": submit(clean, algorithm="Ridge", regime_configs=[{"kind": "volatility"}])[
            "model_id"
        ],
        "regime_split": submit(clean, algorithm="Ridge", regime_configs=[{"kind": "trend", "mode": "split"}])[
            "model_id"
        ],
    }
    models = wait_for_models(clean, list(ids.values()), timeout=180)
    assert all(m["status"] == "completed" for m in models.values()), models

    def features(model_id: int) -> set[str]:
        rows = clean.execute("SELECT feature FROM features_log WHERE model_id = %s", (model_id,)).fetchall()
        return {row[0] for row in rows}

    def folds(model_id: int) -> list[dict]:
        return clean.execute("SELECT fold_metrics FROM models WHERE id = %s", (model_id,)).fetchone()[0]

    assert {"MSFT/ret_1", "IBM/ret_1"} <= features(ids["context"])
    chosen = models[ids["grid"]]["metrics"]["chosen_hyperparameters"]
    assert chosen["alpha"] in (1e-4, 1e-2, 1.0) and chosen["l1_ratio"] in (0.1, 0.9)
    assert all("chosen_hyperparameters" in fold for fold in folds(ids["grid"]))
    sliding = [fold["train_size"] for fold in folds(ids["sliding"])]
    assert len(sliding) == 4 and len(set(sliding)) == 1
    assert len(folds(ids["purged"])) == 4
    assert any(name.startswith("regime:volatility") for name in features(ids["regime_feature"]))
    for key in ("regime_feature", "regime_split"):
        assert models[ids[key]]["metrics"]["per_regime"], key


def insert_weekly_bars(conn, symbol: str) -> None:
    """The symbol's daily bars resampled to weeks (first open, max high, min low, last close, volume)."""
    conn.execute(
        """
        INSERT INTO bars (symbol, timeframe, ts, open, high, low, close, volume)
        SELECT symbol, '1w', week, (array_agg(open ORDER BY ts))[1], max(high), min(low),
               (array_agg(close ORDER BY ts DESC))[1], sum(volume)
          FROM (SELECT *, date_trunc('week', ts) AS week FROM bars WHERE symbol = %s AND timeframe = '1d') d
         GROUP BY symbol, week
        ON CONFLICT DO NOTHING
        """,
        (symbol,),
    )


def test_classic_fields_change_training_as_they_say(clean, start_worker):
    """One real worker, one model per changed field: each result differs from the base the way the
    field says (windows, folds, features, horizon, target, data end, timeframe, algorithm)."""
    insert_weekly_bars(clean, "AAPL")
    start_worker(1)
    base = {"algorithm": "Ridge"}
    variants = {
        "base": {},
        "train_window": {"train_window": 400},
        "test_window": {"test_window": 90},
        "cv_folds": {"cv_folds": 3},
        "features": {"features": ["ret_1", "ret_5", "vol_20"]},
        "horizon": {"horizon": 5},
        "target_col": {"target_col": "high"},
        "target_transform": {"target_transform": "raw"},
        "data_end": {"data_end": "2010-06-30T00:00:00Z"},
        "timeframe": {"timeframe": "1w"},
        "hyperparameters": {"hyperparameters": {"alpha": 1e6}},
        "algorithm": {"algorithm": "RandomForest", "hyperparameters": {"n_estimators": 10}},
        "symbol": {"symbol": "MSFT"},
    }
    ids = {name: submit(clean, **{**base, **fields})["model_id"] for name, fields in variants.items()}
    models = wait_for_models(clean, list(ids.values()), timeout=240)
    assert all(m["status"] == "completed" for m in models.values()), models
    metrics = {name: models[model_id]["metrics"] for name, model_id in ids.items()}
    rows = {
        name: clean.execute(
            "SELECT fold_metrics,"
            " (SELECT array_agg(feature ORDER BY feature) FROM features_log WHERE model_id = m.id),"
            " (SELECT min(method) FROM features_log WHERE model_id = m.id),"
            " (SELECT x.actual FROM model_prediction_series s JOIN prediction_axes x ON x.sha256 = s.axes"
            "   WHERE s.model_id = m.id),"
            " (SELECT predicted FROM model_prediction_series WHERE model_id = m.id)"
            " FROM models m WHERE id = %s",
            (model_id,),
        ).fetchone()
        for name, model_id in ids.items()
    }
    b = metrics["base"]
    assert (b["n_train"], b["n_test"]) == (300, 60)
    assert metrics["train_window"]["n_train"] == 400
    assert metrics["test_window"]["n_test"] == 90
    assert len(rows["cv_folds"][0]) == 3 and len(rows["base"][0]) == 5
    assert rows["features"][1] == ["ret_1", "ret_5", "vol_20"] and len(rows["base"][1]) == 13
    # The last test target looks `horizon` bars past the last test row: it ends earlier for horizon 5.
    assert metrics["horizon"]["test_end"] < b["test_end"]
    assert rows["target_col"][3] != rows["base"][3]  # high vs close at t + 1
    assert (
        min(rows["target_transform"][3]) > 1.0 > max(abs(v) for v in rows["base"][3])
    )  # prices, not returns
    assert metrics["data_end"]["test_end"] < "2010-07-01"

    def test_days(m: dict) -> int:
        return (datetime.fromisoformat(m["test_end"]) - datetime.fromisoformat(m["test_start"])).days

    assert test_days(metrics["timeframe"]) > 300 > 100 > test_days(b)  # 60 weekly bars against 60 daily
    # A huge ridge penalty shrinks every prediction to the training mean.
    assert np.std(rows["hyperparameters"][4]) < 0.01 * np.std(rows["base"][4])
    assert (rows["algorithm"][2], rows["base"][2]) == ("impurity", "abs_coefficient")
    assert rows["symbol"][3] != rows["base"][3]
