"""Retrain policies per strategy alias and champion/challenger (issue 16): every n bars in the bars' own
transaction, weekly and cron schedules once per due time, and the decision recorded with both values,
against real PostgreSQL, a real API, the real CLI and real workers."""

from __future__ import annotations

import datetime as dt
import time

import croniter
import httpx
import psycopg
import pytest
from psycopg import errors
from psycopg.types.json import Jsonb

from queue_app.client import Client
from queue_app.errors import Rejected
from tests.conftest import run_sfq, wait_for_models
from tests.test_strategies import TOKEN, completed_model, copy_bars, insert_bar


def policies(conn: psycopg.Connection, strategy: str) -> list[tuple]:
    return conn.execute(
        "SELECT alias, policy, objective, tolerance FROM retrain_policies WHERE strategy = %s ORDER BY alias",
        (strategy,),
    ).fetchall()


def retrains(conn: psycopg.Connection, strategy: str) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            "SELECT * FROM strategy_retrains WHERE strategy = %s ORDER BY id", (strategy,)
        ).fetchall()


def wait_for_verdict(conn: psycopg.Connection, retrain_id: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            row = cursor.execute("SELECT * FROM strategy_retrains WHERE id = %s", (retrain_id,)).fetchone()
        if row["verdict"] is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"retrain {retrain_id} not decided within {timeout} s: {row}")


def alias_model(conn: psycopg.Connection, strategy: str, alias: str) -> int | None:
    row = conn.execute(
        "SELECT model_id FROM strategy_aliases WHERE strategy = %s AND alias = %s", (strategy, alias)
    ).fetchone()
    return row[0] if row else None


def metric(conn: psycopg.Connection, model_id: int, name: str) -> float:
    query = "SELECT (metrics->>%s)::float8 FROM models WHERE id = %s"
    return conn.execute(query, (name, model_id)).fetchone()[0]


EXPRESSIONS = ("0 18 * * 1", "*/15 * * * *", "30 9 1,15 * *", "0 0 13 * 5", "5-10/2 3 * 2 0-2", "0 0 29 2 *")
MOMENTS = (dt.datetime(2026, 12, 2, 11, 40, tzinfo=dt.UTC), dt.datetime(2027, 3, 1, tzinfo=dt.UTC))


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_the_sql_schedule_is_croniter_s(conn, expression):
    """The database evaluates cron expressions itself; its latest due time is croniter's (Procrastinate's)."""
    for moment in MOMENTS:
        latest = conn.execute("SELECT sfq_cron_latest(%s, %s)", (expression, moment)).fetchone()[0]
        expected = croniter.croniter(expression, moment + dt.timedelta(seconds=1)).get_prev(dt.datetime)
        assert latest == expected, (expression, moment)


BAD_POLICIES = [
    ({"kind": "every_n_bars", "n": 0}, None, None, "policy.n"),
    ({"kind": "every_n_bars", "n": 2.5}, None, None, "policy.n"),
    ({"kind": "every_n_bars"}, None, None, "policy.n"),
    ({"kind": "hourly"}, None, None, "policy.kind"),
    ({"n": 2}, None, None, "policy.kind"),
    ([2], None, None, "policy"),
    ({"kind": "every_n_bars", "n": 2, "cron": "* * * * *"}, None, None, "policy.cron"),
    ({"kind": "cron", "cron": "61 * * * *"}, None, None, "policy.cron"),
    ({"kind": "cron", "cron": "* * * *"}, None, None, "policy.cron"),
    ({"kind": "cron", "cron": "0 0 31 2 *"}, None, None, "policy.cron"),
    ({"kind": "weekly", "weekday": "someday", "time": "18:00"}, None, None, "policy.weekday"),
    ({"kind": "weekly", "weekday": "friday", "time": "24:00"}, None, None, "policy.time"),
    ({"kind": "every_n_bars", "n": 2}, "NaN", None, "tolerance"),
    ({"kind": "every_n_bars", "n": 2}, None, "sharpe", "objective"),
]


def test_bad_policies_are_refused_over_sql_http_and_cli_and_nothing_is_stored(
    clean, database, start_api, monkeypatch
):
    model = completed_model(clean, symbol="AAPL", horizon=5)
    clean.execute("SELECT sfq_move_alias('bad-1', 'production', %s, 'first')", (model,))
    for policy, tolerance, objective, column in BAD_POLICIES:
        with pytest.raises(errors.InvalidParameterValue) as raised:
            clean.execute(
                "SELECT sfq_set_retrain_policy('bad-1', 'production', %s, %s, %s)",
                (Jsonb(policy), tolerance, objective),
            )
        assert raised.value.diag.column_name == column, policy
    with pytest.raises(errors.NoDataFound, match="no alias candidate"):
        every_two = Jsonb({"kind": "every_n_bars", "n": 2})
        clean.execute("SELECT sfq_set_retrain_policy('bad-1', 'candidate', %s)", (every_two,))

    monkeypatch.setenv("SFQ_API_TOKENS", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN.split(':')[1]}"}
    path = "/strategies/bad-1/aliases/production/retrain-policy"
    with httpx.Client(base_url=start_api(), timeout=30, headers=auth) as api:
        for policy, tolerance, objective, column in [
            *BAD_POLICIES[:-2],
            ({"kind": "every_n_bars", "n": 2}, "0.1", None, "tolerance"),
            ({"kind": "every_n_bars", "n": 2}, 10**400, None, "tolerance"),
            ({"kind": "every_n_bars", "n": 2}, None, "sharpe", "objective"),
        ]:
            body = {"policy": policy, "tolerance": tolerance, "objective": objective}
            answer = api.put(path, json={k: v for k, v in body.items() if v is not None})
            assert (answer.status_code, answer.json()["detail"]) == (422, {"field": column}), policy
        unknown = api.put("/strategies/nobody/aliases/production/retrain-policy", json={"policy": {}})
        assert unknown.status_code == 422  # the policy is checked first
        unknown = api.put(
            "/strategies/nobody/aliases/production/retrain-policy",
            json={"policy": {"kind": "every_n_bars", "n": 2}},
        )
        assert unknown.status_code == 404
        assert api.get("/strategies/bad-1").json()["retrain_policies"] == []
        unauthenticated = httpx.put(
            f"{api.base_url}{path}", json={"policy": {"kind": "every_n_bars", "n": 2}}
        )
        assert unauthenticated.status_code == 401

    for options, field in [
        (["--every-n-bars", "0"], "policy.n"),
        (["--cron", "61 * * * *"], "policy.cron"),
        (["--weekly", "friday", "25:00"], "policy.time"),
        (["--every-n-bars", "2", "--objective", "sharpe"], "objective"),
    ]:
        refused = run_sfq("retrain-policy", "bad-1", "production", *options, url=database)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert field in refused.stderr, refused.stderr
    assert policies(clean, "bad-1") == []

    # A good one, over each way in: stored in canonical form, shown by GET /strategies/{name} and the CLI.
    clean.execute(
        "SELECT sfq_set_retrain_policy('bad-1', 'production', %s, 0.01)",
        (Jsonb({"kind": "weekly", "weekday": "Friday", "time": "21:30"}),),
    )
    assert policies(clean, "bad-1") == [
        ("production", {"kind": "weekly", "weekday": "friday", "time": "21:30"}, "cv_ic", 0.01)
    ]
    assert clean.execute("SELECT cron FROM retrain_policies WHERE strategy = 'bad-1'").fetchone() == (
        "30 21 * * 5",
    )
    saved = run_sfq("retrain-policy", "bad-1", "production", "--cron", "0 22 * * 1-5", url=database)
    assert saved.returncode == 0, saved.stderr
    shown = run_sfq("strategy", "bad-1", url=database)
    assert '"cron": "0 22 * * 1-5"' in shown.stdout and "cv_ic (maximize) tolerance 0.0" in shown.stdout
    with httpx.Client(base_url=start_api(), timeout=30, headers=auth) as api:
        body = {"policy": {"kind": "every_n_bars", "n": 3}, "tolerance": 0.02, "objective": "cv_rmse"}
        saved = api.put(path, json=body)
        assert saved.status_code == 200, saved.text
        assert (saved.json()["set_by"], saved.json()["via"]) == ("alice", "http")
        with (
            Client(str(api.base_url), token=TOKEN.split(":")[1]) as client,
            pytest.raises(Rejected) as raised,
        ):
            client.set_retrain_policy("bad-1", "production", {"kind": "cron", "cron": "0 0 * * 9"})
        assert raised.value.field == "policy.cron"
        (shown,) = api.get("/strategies/bad-1").json()["retrain_policies"]
        assert (shown["policy"], shown["objective"], shown["direction"], shown["tolerance"]) == (
            {"kind": "every_n_bars", "n": 3},
            "cv_rmse",
            "minimize",
            0.02,
        )


def test_every_n_bars_retrains_in_the_bars_transaction_and_the_champion_is_challenged(
    clean, database, start_worker, api
):
    symbol = "RETR"
    news = copy_bars(clean, symbol, keep_last=4)
    start_worker(1)
    spec = {"symbol": symbol, "algorithm": "Ridge", "train_window": 300, "test_window": 250}
    champion = api.post("/train", json=spec).json()["model_id"]
    assert wait_for_models(clean, [champion])[champion]["status"] == "completed"
    clean.execute("SELECT sfq_move_alias('retr-1', 'production', %s, 'first model')", (champion,))
    clean.execute(
        "SELECT sfq_set_retrain_policy('retr-1', 'production', %s, 1e9)",
        (Jsonb({"kind": "every_n_bars", "n": 2}),),
    )

    insert_bar(clean, symbol, news[0])
    assert retrains(clean, "retr-1") == []
    # The second bar submits the retrain, in the bars' own transaction: a rollback takes both back.
    with psycopg.connect(database) as tx:
        insert_bar(tx, symbol, news[1])
        (pending,) = tx.execute("SELECT model_id FROM strategy_retrains WHERE strategy = 'retr-1'").fetchall()
        tx.rollback()
    assert retrains(clean, "retr-1") == []
    assert clean.execute("SELECT count(*) FROM models WHERE id = %s", pending).fetchone() == (0,)
    insert_bar(clean, symbol, news[1])
    (retrain,) = retrains(clean, "retr-1")
    challenger = retrain["model_id"]
    row = clean.execute(
        "SELECT retrain_of, data_end, (SELECT max(ts) FROM bars WHERE symbol = %s) FROM models WHERE id = %s",
        (symbol, challenger),
    ).fetchone()
    assert row[0] == champion and row[1] == row[2] == news[1][0]  # its data window moved to the new bars
    assert (retrain["source_model_id"], retrain["cause"]) == (champion, "every_n_bars")
    assert retrain["verdict"] is None  # decided when the retrained model ends

    decided = first_decision = wait_for_verdict(clean, retrain["id"])
    assert decided["verdict"] == "promoted"
    assert decided["champion_model_id"] == champion
    assert decided["champion_value"] == metric(clean, champion, "cv_ic_mean")
    assert decided["challenger_value"] == metric(clean, challenger, "cv_ic_mean")
    assert (decided["objective"], decided["direction"], decided["tolerance"]) == ("cv_ic", "maximize", 1e9)
    assert alias_model(clean, "retr-1", "production") == challenger
    moved_by, reason = clean.execute(
        "SELECT moved_by, reason FROM strategy_alias_history WHERE id = %s", (decided["history_id"],)
    ).fetchone()
    assert moved_by == "retrain-policy"
    assert str(decided["champion_value"]) in reason and str(decided["challenger_value"]) in reason

    # A tolerance no model can meet (it must be better by 1e9): the next retrain is only the candidate.
    clean.execute(
        "SELECT sfq_set_retrain_policy('retr-1', 'production', %s, -1e9)",
        (Jsonb({"kind": "every_n_bars", "n": 2}),),
    )
    insert_bar(clean, symbol, news[2])
    insert_bar(clean, symbol, news[3])
    first, second = retrains(clean, "retr-1")
    assert second["source_model_id"] == challenger
    decided = wait_for_verdict(clean, second["id"])
    assert decided["verdict"] == "candidate"
    assert decided["champion_value"] == metric(clean, challenger, "cv_ic_mean")
    assert decided["challenger_value"] == metric(clean, second["model_id"], "cv_ic_mean")
    assert alias_model(clean, "retr-1", "production") == challenger
    assert alias_model(clean, "retr-1", "candidate") == second["model_id"]

    with Client(str(api.base_url)) as client:  # the notebooks' client reads the same decisions
        table = client.strategy_retrains("retr-1")
    assert list(table.index) == [second["id"], first["id"]]
    assert list(table["verdict"]) == ["candidate", "promoted"]
    assert table.loc[first["id"], "champion_value"] == first_decision["champion_value"]
    shown = api.get("/strategies/retr-1").json()
    assert [(r["id"], r["verdict"]) for r in shown["retrains"]] == [
        (second["id"], "candidate"),
        (first["id"], "promoted"),
    ]
    assert shown["retrain_policies"][0]["policy"] == {"kind": "every_n_bars", "n": 2}
    history = api.get("/strategies/retr-1/history").json()
    assert [r["challenger_value"] for r in history["retrains"]] == [
        decided["challenger_value"],
        metric(clean, challenger, "cv_ic_mean"),
    ]

    # A cron policy, due since a minute ago (its setting moved back an hour): the daemon's heartbeat check
    # retrains it, once for that due time.
    clean.execute(
        "SELECT sfq_set_retrain_policy('retr-1', 'production', %s)",
        (Jsonb({"kind": "cron", "cron": "* * * * *"}),),
    )
    clean.execute("UPDATE retrain_policies SET last_due_at = last_due_at - interval '1 hour'")
    deadline = time.monotonic() + 60
    while not (scheduled := [r for r in retrains(clean, "retr-1") if r["cause"] == "cron"]):
        assert time.monotonic() < deadline, "no worker daemon retrained the due cron policy"
        time.sleep(0.1)
    (retrain,) = scheduled
    assert retrain["source_model_id"] == challenger and retrain["due_at"].second == 0


def test_a_due_schedule_retrains_once_however_often_it_is_checked(clean, database):
    symbol = "SCHED"
    news = copy_bars(clean, symbol, keep_last=1)
    model = completed_model(clean, symbol=symbol)
    clean.execute("SELECT sfq_move_alias('sched-1', 'production', %s, 'first')", (model,))
    clean.execute("SELECT sfq_move_alias('sched-2', 'production', %s, 'first')", (model,))
    clean.execute(
        "SELECT sfq_set_retrain_policy('sched-1', 'production', %s)",
        (Jsonb({"kind": "weekly", "weekday": "monday", "time": "06:00"}),),
    )
    clean.execute(
        "SELECT sfq_set_retrain_policy('sched-2', 'production', %s)",
        (Jsonb({"kind": "cron", "cron": "0 * * * *"}),),
    )
    insert_bar(clean, symbol, news[0])  # new data for the retrain

    assert clean.execute("SELECT * FROM sfq_retrain_due()").fetchall() == []  # nothing due since it was set
    later = clean.execute("SELECT now() + interval '8 days'").fetchone()[0]
    first = clean.execute("SELECT strategy, due_at, model_id FROM sfq_retrain_due(%s)", (later,)).fetchall()
    again = clean.execute("SELECT strategy, due_at, model_id FROM sfq_retrain_due(%s)", (later,)).fetchall()
    assert sorted(s for s, _, _ in first) == ["sched-1", "sched-2"] and again == []
    for strategy, due_at, model_id in first:
        expression = "0 6 * * 1" if strategy == "sched-1" else "0 * * * *"
        assert due_at == croniter.croniter(expression, later).get_prev(dt.datetime)
        assert [(r["model_id"], r["due_at"]) for r in retrains(clean, strategy)] == [(model_id, due_at)]
    # Both retrain the same spec on the same bars: one training request's model, trained once.
    assert len({m for _, _, m in first}) == 1
    assert clean.execute("SELECT count(*) FROM models WHERE retrain_of = %s", (model,)).fetchone() == (1,)

    # Two checks at once (two daemons): the second skips the policies the first holds, finds nothing to do,
    # and does not wait; after the first commits, a third finds nothing due.
    week_later = later + dt.timedelta(days=7)
    check = "SELECT strategy FROM sfq_retrain_due(%s)"
    with psycopg.connect(database) as one, psycopg.connect(database) as other:
        assert len(one.execute(check, (week_later,)).fetchall()) == 2
        other.execute("SET lock_timeout = '5s'")  # waiting would fail the test rather than hang it
        assert other.execute(check, (week_later,)).fetchall() == []
        other.commit()
        one.commit()
    assert clean.execute(check, (week_later,)).fetchall() == []
    assert [len(retrains(clean, s)) for s in ("sched-1", "sched-2")] == [2, 2]


def test_a_decision_commits_with_its_model_s_end_or_not_at_all(clean, database):
    """The decision is made in the transaction that records the retrained model's end: a worker killed
    before its commit leaves neither (the retried training decides, once); a failed retrain moves nothing."""
    symbol = "ENDS"
    news = copy_bars(clean, symbol, keep_last=2)
    model = completed_model(clean, symbol=symbol)
    clean.execute("UPDATE models SET metrics = '{\"cv_ic_mean\": 0.2}' WHERE id = %s", (model,))
    clean.execute("SELECT sfq_move_alias('ends-1', 'production', %s, 'first')", (model,))
    clean.execute(
        "SELECT sfq_set_retrain_policy('ends-1', 'production', %s)",
        (Jsonb({"kind": "every_n_bars", "n": 1}),),
    )
    insert_bar(clean, symbol, news[0])
    (retrain,) = retrains(clean, "ends-1")
    challenger = retrain["model_id"]
    clean.execute("UPDATE models SET status = 'running', attempts = 1 WHERE id = %s", (challenger,))
    complete = "UPDATE models SET status = 'completed', metrics = '{\"cv_ic_mean\": 0.25}' WHERE id = %s"
    with psycopg.connect(database) as tx:
        tx.execute(complete, (challenger,))
        assert tx.execute("SELECT verdict FROM strategy_retrains").fetchone() == ("promoted",)
        tx.rollback()  # the worker was killed before it committed
    assert retrains(clean, "ends-1")[0]["verdict"] is None
    assert alias_model(clean, "ends-1", "production") == model
    clean.execute(complete, (challenger,))
    (decided,) = retrains(clean, "ends-1")
    assert (decided["verdict"], decided["champion_value"], decided["challenger_value"]) == (
        "promoted",
        0.2,
        0.25,
    )
    moves = clean.execute(
        "SELECT model_id FROM strategy_alias_history WHERE strategy = 'ends-1' ORDER BY id"
    ).fetchall()
    assert moves == [(model,), (challenger,)]

    insert_bar(clean, symbol, news[1])
    _, failing = retrains(clean, "ends-1")
    clean.execute("UPDATE models SET status = 'failed', error = 'boom' WHERE id = %s", (failing["model_id"],))
    ((verdict, reason),) = clean.execute(
        "SELECT verdict, reason FROM strategy_retrains WHERE id = %s", (failing["id"],)
    ).fetchall()
    assert verdict == "failed" and "is failed; nothing moves" in reason
    assert alias_model(clean, "ends-1", "production") == challenger
    assert alias_model(clean, "ends-1", "candidate") is None


def test_only_appended_bars_count_and_a_rolled_back_import_counts_nothing(clean, database):
    symbol = "COUNT"
    news = copy_bars(clean, symbol, keep_last=1)
    model = completed_model(clean, symbol=symbol)
    clean.execute("SELECT sfq_move_alias('count-1', 'production', %s, 'first')", (model,))
    clean.execute(
        "SELECT sfq_set_retrain_policy('count-1', 'production', %s)",
        (Jsonb({"kind": "every_n_bars", "n": 2}),),
    )
    pending = "SELECT bars_pending FROM retrain_policies WHERE strategy = 'count-1'"
    backfill = clean.execute(
        "DELETE FROM bars WHERE symbol = %s AND ts = (SELECT ts FROM bars WHERE symbol = %s ORDER BY ts DESC"
        " OFFSET 20 LIMIT 1) RETURNING ts, open, high, low, close, volume",
        (symbol, symbol),
    ).fetchone()
    insert_bar(clean, symbol, backfill)  # history, not news
    assert clean.execute(pending).fetchone() == (0,)
    with psycopg.connect(database) as tx:
        insert_bar(tx, symbol, news[0])
        assert tx.execute(pending).fetchone() == (1,)
        tx.rollback()
    assert clean.execute(pending).fetchone() == (0,)
    insert_bar(clean, symbol, news[0])
    assert clean.execute(pending).fetchone() == (1,) and retrains(clean, "count-1") == []
