"""Named strategies (issue 16): aliases on completed models with an append-only history, a forecast for
every new bar of every aliased model deferred in the bars' own transaction, realised values filled in by
the same trigger, and each model's live record beside its backtest with its decay flag (in GET
/strategies/{name} and GET /metrics), against real PostgreSQL, a real API and real workers."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import errors
from scipy import stats as scipy_stats

from tests.conftest import insert_request, run_sfq, wait_for_jobs, wait_for_models
from workers.modelling.backtest import performance
from workers.modelling.live import MIN_DECAY_BARS, decay
from workers.modelling.training import TRANSFORMS, label

TOKEN = "alice:" + "a" * 32


def completed_model(conn: psycopg.Connection, symbol: str = "AAPL", **spec) -> int:
    """A model marked completed without training (for the registry's checks)."""
    model_id = insert_request(conn, {"symbol": symbol, "algorithm": "Ridge", "train_window": 300, **spec})[0]
    conn.execute("UPDATE models SET status = 'completed' WHERE id = %s", (model_id,))
    return model_id


def history(conn: psycopg.Connection, strategy: str) -> list[tuple]:
    return conn.execute(
        "SELECT alias, model_id, previous_model_id, moved_by, db_role, via, reason"
        " FROM strategy_alias_history WHERE strategy = %s ORDER BY id",
        (strategy,),
    ).fetchall()


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_the_sql_label_is_training_s_label(conn, transform):
    future, entry = np.array([101.5, 99.0, 250.0]), np.array([100.0, 100.0, 200.0])
    expected = TRANSFORMS[transform].apply(pd.Series(future), pd.Series(entry)).to_numpy()
    got = [
        conn.execute("SELECT sfq_label(%s, %s, %s)", (transform, f, e)).fetchone()[0]
        for f, e in zip(future, entry, strict=True)
    ]
    assert np.allclose(got, expected)


def test_an_alias_moves_with_its_history_and_bad_moves_change_nothing(clean):
    first, second = completed_model(clean), completed_model(clean, horizon=2)
    failed = insert_request(clean, {"symbol": "AAPL", "algorithm": "Ridge", "horizon": 3})[0]
    clean.execute("UPDATE models SET status = 'failed' WHERE id = %s", (failed,))

    clean.execute("SELECT sfq_move_alias('trend-1', 'production', %s, 'first')", (first,))
    clean.execute("SELECT sfq_move_alias('trend-1', 'production', %s, 'better IC')", (second,))
    clean.execute("SELECT sfq_move_alias('trend-1', 'production', %s, 'again: no move')", (second,))
    role = clean.execute("SELECT session_user").fetchone()[0]
    assert history(clean, "trend-1") == [
        ("production", first, None, role, role, "sql", "first"),
        ("production", second, first, role, role, "sql", "better IC"),
    ]
    bad = [
        ("Trend 1", "production", first, "x", errors.InvalidParameterValue, "strategy"),
        ("trend-1", "prod/uction", first, "x", errors.InvalidParameterValue, "alias"),
        ("trend-1", "candidate", 999999, "x", errors.InvalidParameterValue, "model_id"),
        ("trend-1", "candidate", failed, "x", errors.ObjectNotInPrerequisiteState, "model_id"),
        ("trend-1", "candidate", first, " ", errors.InvalidParameterValue, "reason"),
        ("trend-1", "candidate", None, "x", errors.NotNullViolation, "model_id"),
    ]
    for strategy, alias, model, reason, error, column in bad:
        with pytest.raises(error) as raised:
            clean.execute("SELECT sfq_move_alias(%s, %s, %s, %s)", (strategy, alias, model, reason))
        assert raised.value.diag.column_name == column
    assert len(history(clean, "trend-1")) == 2
    aliases = clean.execute(
        "SELECT alias, model_id FROM strategy_aliases WHERE strategy = 'trend-1'"
    ).fetchall()
    assert aliases == [("production", second)]
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="append-only"):
        clean.execute("UPDATE strategy_alias_history SET reason = 'rewritten'")
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="append-only"):
        clean.execute("DELETE FROM strategy_alias_history")


def test_the_api_moves_aliases_as_the_token_s_name_and_names_bad_fields(clean, start_api, monkeypatch):
    monkeypatch.setenv("SFQ_API_TOKENS", TOKEN)
    model = completed_model(clean)
    failed = insert_request(clean, {"symbol": "AAPL", "algorithm": "Ridge", "horizon": 4})[0]
    clean.execute("UPDATE models SET status = 'failed' WHERE id = %s", (failed,))
    auth = {"Authorization": f"Bearer {TOKEN.split(':')[1]}"}
    with httpx.Client(base_url=start_api(), timeout=30, headers=auth) as api:
        cases = [
            ("/strategies/Bad Name/aliases/production", {"model_id": model, "reason": "x"}, 422, "strategy"),
            ("/strategies/api-1/aliases/PROD", {"model_id": model, "reason": "x"}, 422, "alias"),
            ("/strategies/api-1/aliases/production", {"model_id": model}, 422, "reason"),
            ("/strategies/api-1/aliases/production", {"model_id": model, "reason": "a\x00b"}, 422, "reason"),
            ("/strategies/api-1/aliases/production", {"model_id": "7", "reason": "x"}, 422, "model_id"),
            ("/strategies/api-1/aliases/production", {"model_id": 999999, "reason": "x"}, 422, "model_id"),
        ]
        for path, body, status, field in cases:
            answer = api.post(path, json=body)
            assert (answer.status_code, answer.json()["detail"]) == (status, {"field": field}), path
        refused = api.post("/strategies/api-1/aliases/production", json={"model_id": failed, "reason": "x"})
        assert refused.status_code == 409 and "only a completed model" in refused.json()["error"]
        assert api.get("/strategies/api-1").status_code == 404  # nothing half-done: no strategy either

        moved = api.post(
            "/strategies/api-1/aliases/production", json={"model_id": model, "reason": "go live"}
        )
        assert moved.status_code == 200, moved.text
        assert (moved.json()["moved_by"], moved.json()["via"]) == ("alice", "http")
        unauthenticated = httpx.post(f"{api.base_url}/strategies/api-1/aliases/candidate", json={})
        assert unauthenticated.status_code == 401
        (entry,) = api.get("/strategies/api-1/history").json()["history"]
        assert (entry["alias"], entry["model_id"], entry["moved_by"], entry["reason"]) == (
            "production",
            model,
            "alice",
            "go live",
        )
        strategy = api.get("/strategies/api-1").json()
        assert [(a["alias"], a["model_id"]) for a in strategy["aliases"]] == [("production", model)]


def copy_bars(conn: psycopg.Connection, symbol: str, keep_last: int) -> list[tuple]:
    """AAPL's daily bars as `symbol`, all but the last `keep_last`; returns those, oldest first."""
    conn.execute("DELETE FROM bars WHERE symbol = %s", (symbol,))
    rows = conn.execute(
        "SELECT ts, open, high, low, close, volume FROM bars"
        " WHERE symbol = 'AAPL' AND timeframe = '1d' ORDER BY ts"
    ).fetchall()
    with conn.cursor() as cursor, cursor.copy("COPY bars FROM STDIN") as copy:
        for row in rows[:-keep_last]:
            copy.write_row((symbol, "1d", *row))
    return rows[-keep_last:]


def insert_bar(conn: psycopg.Connection, symbol: str, row: tuple) -> None:
    conn.execute(
        "INSERT INTO bars (symbol, timeframe, ts, open, high, low, close, volume)"
        " VALUES (%s, '1d', %s, %s, %s, %s, %s, %s)",
        (symbol, *row),
    )


def wait_for_record(conn: psycopg.Connection, model_id: int, forecasts: int, timeout: float = 60) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT forecasts, realised, metrics FROM model_live_records WHERE model_id = %s", (model_id,)
        ).fetchone()
        if row and row[0] >= forecasts:
            return row
        time.sleep(0.1)
    raise AssertionError(
        f"model {model_id}'s live record has not {forecasts} forecasts after {timeout} s: {row}"
    )


def test_every_new_bar_forecasts_the_aliased_models_and_builds_a_live_record(
    clean, database, api, start_worker, tmp_path
):
    symbol = "LIVE"
    news = copy_bars(clean, symbol, keep_last=5)
    start_worker(1)
    spec = {"symbol": symbol, "algorithm": "Ridge", "train_window": 300, "test_window": 250}
    model = api.post("/train", json=spec).json()["model_id"]
    assert wait_for_models(clean, [model])[model]["status"] == "completed"
    promoted = run_sfq("promote", "live-1", str(model), "--reason", "first model", url=database)
    assert promoted.returncode == 0, promoted.stderr
    assert "live-1/production -> model" in promoted.stdout

    # A plain SQL INSERT: the forecast and its job exist in the bars' own transaction, and go with it.
    with psycopg.connect(database) as tx:
        insert_bar(tx, symbol, news[0])
        forecast = tx.execute(
            "SELECT id, job_id FROM model_forecasts WHERE model_id = %s", (model,)
        ).fetchall()
        assert len(forecast) == 1
        queue = tx.execute(
            "SELECT queue_name FROM procrastinate_jobs WHERE id = %s", (forecast[0][1],)
        ).fetchone()
        assert queue == ("prediction",)
        tx.rollback()
    assert clean.execute("SELECT count(*) FROM model_forecasts").fetchone() == (0,)

    insert_bar(clean, symbol, news[0])
    with pytest.raises(errors.UniqueViolation):  # the same bar twice: refused, nothing forecast twice
        insert_bar(clean, symbol, news[0])
    # The next bars through `sfq bars import`, one file of two bars then one at a time.
    for batch in (news[1:3], news[3:4], news[4:5]):
        csv = tmp_path / "bars.csv"
        csv.write_text(
            "ts,open,high,low,close,volume\n"
            + "".join(f"{r[0].isoformat()},{','.join(map(str, r[1:]))}\n" for r in batch)
        )
        imported = run_sfq("bars", "import", str(csv), "--symbol", symbol, url=database)
        assert imported.returncode == 0, imported.stderr
    # A bar before the latest (a backfill, out of order) is history: no forecast for it.
    removed = clean.execute(
        "DELETE FROM bars WHERE symbol = %s AND ts = %s RETURNING ts, open, high, low, close, volume",
        (symbol, _earlier(clean, symbol)),
    ).fetchone()
    insert_bar(clean, symbol, removed)

    as_of = [
        r[0]
        for r in clean.execute(
            "SELECT as_of FROM model_forecasts WHERE model_id = %s ORDER BY as_of", (model,)
        )
    ]
    assert as_of == [r[0] for r in news[:5]]
    jobs = clean.execute(
        "SELECT count(*) FROM procrastinate_jobs"
        " WHERE task_name = 'predict_model' AND queue_name = 'prediction'"
    ).fetchone()
    assert jobs == (5,)
    forecasts, realised, metrics = wait_for_record(clean, model, 5)
    assert (forecasts, realised) == (5, 3)  # execution_lag 1, horizon 1: realised two bars later

    # Realised values: training's own label at each forecast's bar.
    bars = pd.DataFrame(
        clean.execute(
            "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = %s ORDER BY ts", (symbol,)
        ).fetchall(),
        columns=["ts", "open", "high", "low", "close", "volume"],
    ).set_index("ts")
    spec_row = clean.execute("SELECT models.spec FROM models WHERE id = %s", (model,)).fetchone()[0]
    expected, _ = label(bars, spec_row)
    stored = clean.execute(
        "SELECT as_of, realised FROM model_forecasts"
        " WHERE model_id = %s AND realised IS NOT NULL ORDER BY as_of",
        (model,),
    ).fetchall()
    assert [ts for ts, _ in stored] == [r[0] for r in news[:3]]
    assert all(math.isclose(value, expected[ts]) for ts, value in stored)

    strategy = api.get("/strategies/live-1").json()
    (production,) = strategy["aliases"]
    live, backtest = production["live"], production["backtest"]
    assert (production["alias"], production["model_id"], live["forecasts"], live["realised"]) == (
        "production",
        model,
        5,
        3,
    )
    assert {"directional_accuracy", "ic", "n"} <= live.keys() and live["n"] == 3
    assert live["paper_trading"]["n"] >= 1 and live["equity_curve"][0][1] == 1.0
    assert {"directional_accuracy", "ic"} <= backtest["held_out"].keys()
    assert backtest["paper_trading"] is not None and "sharpe" in backtest["paper_trading"]
    assert production["latest_forecast"]["as_of"].startswith(news[4][0].date().isoformat())


def _earlier(conn: psycopg.Connection, symbol: str):
    """A bar well before the latest one."""
    return conn.execute(
        "SELECT ts FROM bars WHERE symbol = %s ORDER BY ts DESC OFFSET 20 LIMIT 1", (symbol,)
    ).fetchone()[0]


PER_YEAR = 252.0  # daily bars on the equity calendar


def _standard_error(returns: np.ndarray) -> float:
    """The annualised standard error of the Sharpe of `returns`, by the test's own arithmetic (scipy's
    moments), not the project's."""
    sharpe = returns.mean() / returns.std(ddof=1)
    g3, g4 = scipy_stats.skew(returns), scipy_stats.kurtosis(returns, fisher=False)
    return math.sqrt((1 - g3 * sharpe + (g4 - 1) / 4 * sharpe**2) / (len(returns) - 1)) * math.sqrt(PER_YEAR)


def test_decay_flags_a_live_sharpe_below_the_backtest_s_by_more_than_its_standard_error():
    noise = np.random.default_rng(16).normal(0.0, 0.01, 60)
    backtest = performance(noise + 0.002, PER_YEAR)
    assert backtest["sharpe"] > 2

    fallen = noise[::-1] - 0.002
    verdict = decay(performance(fallen, PER_YEAR), backtest, PER_YEAR)
    assert verdict["standard_error"] == pytest.approx(_standard_error(fallen), rel=1e-9)
    assert (verdict["n"], verdict["backtest_sharpe"], verdict["decayed"], verdict["reason"]) == (
        60,
        backtest["sharpe"],
        True,
        None,
    )
    assert verdict["live_sharpe"] < verdict["backtest_sharpe"] - verdict["standard_error"]

    holding = decay(performance(noise[::-1] + 0.002, PER_YEAR), backtest, PER_YEAR)
    assert holding["decayed"] is False and holding["reason"] is None

    # The boundary: one standard error below the backtest's Sharpe, just within or just past it.
    live = performance(noise, PER_YEAR)
    error = _standard_error(noise)
    for distance, decayed in ((0.99, False), (1.01, True)):
        against = {"sharpe": live["sharpe"] + distance * error}
        assert decay(live, against, PER_YEAR)["decayed"] is decayed, distance


def test_decay_is_undetermined_below_the_minimum_bars_and_without_a_figure():
    noise = np.random.default_rng(7).normal(0.0, 0.01, MIN_DECAY_BARS)
    backtest = {"sharpe": 50.0}  # any live Sharpe is far below it
    short = decay(performance(noise[:-1], PER_YEAR), backtest, PER_YEAR)
    assert (short["n"], short["decayed"]) == (MIN_DECAY_BARS - 1, None)
    needed = f"insufficient: {MIN_DECAY_BARS - 1} of the {MIN_DECAY_BARS} paper-traded bars needed"
    assert short["reason"] == needed
    assert short["standard_error"] is not None  # measured, not judged
    assert decay(performance(noise, PER_YEAR), backtest, PER_YEAR)["decayed"] is True

    cases = [
        (None, backtest, "insufficient: 0"),  # no paper trading yet
        (performance(noise, PER_YEAR), None, "no backtest Sharpe"),
        (performance(noise, PER_YEAR), {"sharpe": None}, "no backtest Sharpe"),
        (performance(np.full(MIN_DECAY_BARS, 0.001), PER_YEAR), backtest, "no live Sharpe"),
    ]
    for paper_trading, against, reason in cases:
        verdict = decay(paper_trading, against, PER_YEAR)
        assert verdict["decayed"] is None and verdict["reason"].startswith(reason), verdict


def _gauges(text: str, strategy: str, alias: str) -> dict[str, str]:
    """The strategy gauges' sample values of one alias in GET /metrics' text, by metric name."""
    labels = f'{{strategy="{strategy}",alias="{alias}"}}'
    return {
        line.split("{")[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("sfq_strategy_") and labels in line
    }


def test_the_decay_flag_is_stored_with_the_live_record_and_served_by_the_api_and_metrics(
    clean, api, start_worker
):
    symbol = "DECAY"
    news = copy_bars(clean, symbol, keep_last=16)
    start_worker(1)
    model = api.post(
        "/train", json={"symbol": symbol, "algorithm": "Ridge", "train_window": 300, "test_window": 250}
    ).json()["model_id"]
    assert wait_for_models(clean, [model])[model]["status"] == "completed"
    wait_for_jobs(clean, timeout=120)
    # Its default backtest, the Sharpe the live one is held against, removed: asked again once the live
    # record exists, its completion judges the record again.
    clean.execute("DELETE FROM simulation_history WHERE model_id = %s", (model,))
    clean.execute("SELECT sfq_move_alias('decay-1', 'production', %s, 'test')", (model,))

    # Three bars, one realised: too few paper-traded bars for a verdict (NaN in /metrics).
    for row in news[:3]:
        insert_bar(clean, symbol, row)
    early = wait_for_record(clean, model, 3)[2]["decay"]
    assert early["decayed"] is None and early["reason"].startswith("insufficient")
    (alias,) = api.get("/strategies/decay-1").json()["aliases"]
    assert alias["decay"]["decayed"] is None and alias["decay"]["n"] < MIN_DECAY_BARS
    gauges = _gauges(api.get("/metrics").text, "decay-1", "production")
    assert gauges["sfq_strategy_decayed"] == gauges["sfq_strategy_backtest_sharpe"] == "NaN"

    # The other thirteen in one statement: 16 forecasts, 14 realised and paper-traded bars (each entered
    # a bar after its forecast, held one), no backtest yet; then the backtest: a verdict, the same in the
    # live record, the API and /metrics.
    with clean.transaction():
        for row in news[3:]:
            insert_bar(clean, symbol, row)
    forecasts, realised, metrics = wait_for_record(clean, model, 16, timeout=120)
    assert (forecasts, realised, metrics["decay"]["n"]) == (16, 14, 14)
    assert metrics["decay"]["decayed"] is None and metrics["decay"]["reason"].startswith("no backtest")

    asked = api.post("/simulate?wait=120", json={"model_id": model, "strategy": "long_short"}, timeout=150)
    assert asked.status_code == 200, asked.text
    backtest = asked.json()["metrics"]
    deadline = time.monotonic() + 60
    while (metrics := wait_for_record(clean, model, 16)[2])["decay"]["backtest_sharpe"] is None:
        assert time.monotonic() < deadline, "the live record was not judged again after the backtest"
        time.sleep(0.1)
    verdict = metrics["decay"]
    paper = metrics["paper_trading"]
    assert verdict["n"] == paper["n"] == 14
    assert (verdict["live_sharpe"], verdict["backtest_sharpe"]) == (paper["sharpe"], backtest["sharpe"])
    equity = np.array(
        [value for _, value in api.get("/strategies/decay-1").json()["aliases"][0]["live"]["equity_curve"]]
    )
    returns = equity[1:] / equity[:-1] - 1
    assert verdict["standard_error"] == pytest.approx(_standard_error(returns), rel=1e-6)
    assert verdict["decayed"] is (
        verdict["live_sharpe"] < verdict["backtest_sharpe"] - verdict["standard_error"]
    )

    (alias,) = api.get("/strategies/decay-1").json()["aliases"]
    assert alias["decay"] == {key: verdict[key] for key in alias["decay"]}
    assert {"live_sharpe", "backtest_sharpe", "standard_error", "n", "decayed"} <= alias["decay"].keys()
    assert "decay" not in alias["live"]
    gauges = _gauges(api.get("/metrics").text, "decay-1", "production")
    assert gauges == {
        "sfq_strategy_decayed": str(float(verdict["decayed"])),
        "sfq_strategy_live_sharpe": str(verdict["live_sharpe"]),
        "sfq_strategy_backtest_sharpe": str(verdict["backtest_sharpe"]),
        "sfq_strategy_sharpe_standard_error": str(verdict["standard_error"]),
        "sfq_strategy_live_bars": "14.0",
    }
    assert api.get("/strategies/no-such").status_code == 404
