"""Database roles (`sfq db roles`, sql/roles.sql, sql/schema/security.sql,
docs/security.md) on a throwaway database of their own: a login role in each group connects and does
what the group is for, with a real worker and a real API where that is what it is, and is refused the
rest."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from queue_app import bars, db
from tests.conftest import insert_request, run_sfq, wait_for_jobs, wait_for_models

GROUPS = ("sfq_submitter", "sfq_worker", "sfq_api")
FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}
DEFINERS = (
    "sfq_accept_training_request",
    "sfq_defer_training_requests",
    "sfq_submit",
    "sfq_submit_many",
    "sfq_submit_batch",
    "sfq_retrain",
    "sfq_evolve",
    "sfq_cancel_model",
    "sfq_request_forecast",
    "sfq_request_lockbox",
    "sfq_request_simulation",
    "sfq_submit_sweep",
    "sfq_create_study",
    "sfq_stop_study",
    "sfq_submit_trial",
    "sfq_study_trial_ended",
    "sfq_move_alias",
    "sfq_bars_arrived",
    "sfq_set_retrain_policy",
    "sfq_retrain_due",
    "sfq_retrain_ended",
    "sfq_wake_sleepers",
    "sfq_prune_requests",
)


@dataclass
class Roles:
    owner: str  # the database as its owner (the superuser that ran `sfq db upgrade` and `sfq db roles`)
    login: dict[str, str]  # group (or "nobody": in no group) -> the URL of a login role in it
    name: dict[str, str]  # group -> that login role's name


@pytest.fixture(scope="module")
def roles(make_database, server_url) -> Iterator[Roles]:
    """The database, upgraded, with AAPL and MSFT bars and `sfq db roles` run twice (idempotent); one
    login role per group, named for this run (roles belong to the whole cluster) and dropped at the end."""
    url = make_database("sfq_roles")
    db.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for symbol, rows in bars.sample_bars():
            if symbol in ("AAPL", "MSFT"):
                bars.load(conn, symbol, "1d", rows)
    for _ in range(2):
        result = run_sfq("db", "roles", url=url)
        assert result.returncode == 0, result.stderr
    suffix = secrets.token_hex(4)
    names = {group: f"sfq_test_{suffix}_{group.removeprefix('sfq_')}" for group in (*GROUPS, "nobody")}
    with psycopg.connect(server_url, autocommit=True) as conn:
        for group, name in names.items():
            member = sql.SQL(" IN ROLE {}").format(sql.Identifier(group)) if group in GROUPS else sql.SQL("")
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)) + member)
    try:
        yield Roles(url, {group: make_conninfo(url, user=name) for group, name in names.items()}, names)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def refused(url: str, *statements: str) -> None:
    """Each statement, on its own, fails for lack of privilege."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
                pytest.fail(f"allowed: {statement}")


def test_roles_before_upgrade_say_to_upgrade_first(make_database):
    empty = make_database("sfq_roles_empty")
    result = run_sfq("db", "roles", url=empty)
    assert result.returncode == 1
    assert "the database has no sfq schema yet: run `sfq db upgrade` first" in result.stderr


def test_groups_cannot_log_in_and_only_granted_roles_execute_functions(roles):
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        groups = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = ANY(%s) ORDER BY rolname",
            (list(GROUPS),),
        ).fetchall()
        assert groups == [(name, False, False, False, False) for name in sorted(GROUPS)]

        definers = conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE prosecdef AND pronamespace = 'public'::regnamespace"
            " ORDER BY proname"
        ).fetchall()
        assert definers == [(name, ["search_path=public, pg_temp"]) for name in sorted(DEFINERS)]

        # No sfq or Procrastinate function is executable by a role outside the groups (PUBLIC's default).
        executable = conn.execute(
            "SELECT proname FROM pg_proc WHERE proname ~ '^(sfq|procrastinate)_'"
            " AND has_function_privilege(%s, oid, 'EXECUTE')",
            (roles.name["nobody"],),
        ).fetchall()
        assert executable == []

        # The file is the whole truth: a privilege granted by hand is gone after `sfq db roles`.
        conn.execute("GRANT DELETE ON models TO sfq_api")
    assert run_sfq("db", "roles", url=roles.owner).returncode == 0
    refused(roles.login["sfq_api"], "DELETE FROM models")
    refused(
        roles.login["nobody"],
        "INSERT INTO training_requests (symbol) VALUES ('AAPL')",
        'SELECT * FROM sfq_submit(\'{"symbol": "AAPL"}\')',
        "SELECT id FROM models",
    )


def test_submitter_submits_and_reads_status_and_nothing_else(roles):
    submitter = roles.login["sfq_submitter"]
    with psycopg.connect(submitter, autocommit=True) as conn:
        model_id, fingerprint, deduplicated, request_id = conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, train_window, test_window, hyperparameters)"
            " VALUES ('AAPL', 'Ridge', 300, 60, '{\"alpha\": 3.0}')"
            " RETURNING model_id, fingerprint, deduplicated, id"
        ).fetchone()
        assert not deduplicated and len(fingerprint) == 64 and request_id > 0
        again = conn.execute(
            "INSERT INTO training_requests (symbol, algorithm, train_window, test_window, hyperparameters)"
            " VALUES ('aapl', 'Ridge', 300, 60, '{\"alpha\": 3}') RETURNING model_id, deduplicated"
        ).fetchone()
        assert again == (model_id, True)
        status = conn.execute(
            "SELECT id, status::text, fingerprint, error, metrics, submitted_at IS NOT NULL, started_at,"
            " finished_at FROM models WHERE id = %s",
            (model_id,),
        ).fetchone()
        assert status == (model_id, "queued", fingerprint, None, None, True, None, None)
        # The JSON way in (sfq_submit) does the same.
        json_model, json_dedup = conn.execute(
            "SELECT model_id, deduplicated FROM sfq_submit(%s::jsonb)",
            ('{"symbol": "MSFT", "algorithm": "Ridge", "hyperparameters": {"alpha": 3.0}}',),
        ).fetchone()
        assert not json_dedup and json_model != model_id
        # The trigger still validates, as the owner, and names the field.
        with pytest.raises(errors.InvalidParameterValue, match="invalid training request: horizon"):
            conn.execute("INSERT INTO training_requests (symbol, horizon) VALUES ('AAPL', 0)")
        assert conn.execute("SELECT name FROM sfq_algorithms WHERE name = 'Ridge'").fetchone() == ("Ridge",)

    with psycopg.connect(roles.owner, autocommit=True) as conn:
        jobs = conn.execute(
            "SELECT (args->>'model_id')::bigint, status::text, task_name FROM procrastinate_jobs"
            " WHERE (args->>'model_id')::bigint = ANY(%s) ORDER BY 1",
            ([model_id, json_model],),
        ).fetchall()
        assert jobs == sorted([(model_id, "todo", "train_model"), (json_model, "todo", "train_model")])
        job_id = conn.execute("SELECT job_id FROM models WHERE id = %s", (model_id,)).fetchone()[0]

    refused(
        submitter,
        "SELECT models.spec FROM models",
        "SELECT * FROM models",
        "SELECT * FROM model_artifacts",
        "SELECT * FROM features_log",
        "SELECT * FROM training_requests",
        f"UPDATE models SET status = 'failed' WHERE id = {model_id}",
        f"DELETE FROM models WHERE id = {model_id}",
        "DELETE FROM training_requests",
        "TRUNCATE models",
        "INSERT INTO models (fingerprint, spec_extra) VALUES ('x', '{}')",
        "INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('training', 'train_model')",
        "SELECT * FROM procrastinate_jobs",
        # Not its id (OVERRIDING SYSTEM VALUE could take the ids of requests to come), nor `via`.
        "INSERT INTO training_requests (id, symbol) OVERRIDING SYSTEM VALUE VALUES (10000000, 'AAPL')",
        "INSERT INTO training_requests (symbol, via) VALUES ('AAPL', 'http')",
        f"SELECT sfq_cancel_model({model_id})",
        f"SELECT sfq_retrain({model_id})",
        'SELECT sfq_submit_batch(\'{"symbol": "AAPL"}\')',
        f"SELECT procrastinate_cancel_job_v1({job_id}, true, false)",
        "SELECT procrastinate_fetch_job_v2(ARRAY['training']::varchar[], NULL)",
        "SELECT procrastinate_defer_jobs_v1(ARRAY[]::procrastinate_job_to_defer_v1[])",
        "SELECT sfq_defer_training(ARRAY[1]::bigint[], ARRAY[0])",
        "SELECT sfq_insert_models(ARRAY[]::models[])",
        "CREATE TABLE submitter_table (x int)",
    )


def test_worker_role_trains_rescues_forecasts_and_cannot_change_the_schema(roles, start_worker):
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        trained = conn.execute(
            "SELECT model_id FROM sfq_submit(%s::jsonb)",
            ('{"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60}',),
        ).fetchone()[0]
        # A job whose worker vanished while it was `doing`: the rescue (run by the worker) hands it on.
        stalled = conn.execute(
            "SELECT model_id FROM sfq_submit(%s::jsonb)",
            ('{"symbol": "MSFT", "algorithm": "Ridge", "train_window": 300, "test_window": 60}',),
        ).fetchone()[0]
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing'"
            " WHERE id = (SELECT job_id FROM models WHERE id = %s)",
            (stalled,),
        )
        worker = start_worker(1, url=roles.login["sfq_worker"], SFQ_HEARTBEAT_S="1", SFQ_RESCUE_AFTER_S="3")
        finished = wait_for_models(conn, [trained, stalled], timeout=120)
        assert {m["status"] for m in finished.values()} == {"completed"}, finished
        worker.wait_for_line(rf"rescue: model {stalled} job \d+ lost its worker: rescued")
        wait_for_jobs(conn)  # the default backtests, run by the worker too
        backtests = conn.execute(
            "SELECT model_id, status FROM simulation_history WHERE model_id = ANY(%s) ORDER BY 1",
            ([trained, stalled],),
        ).fetchall()
        assert backtests == sorted([(trained, "completed"), (stalled, "completed")])
        forecast = conn.execute("SELECT id FROM sfq_request_forecast(%s)", (trained,)).fetchone()[0]
        answer = "SELECT status, error FROM model_forecasts WHERE id = %s"
        deadline = time.monotonic() + 30
        while conn.execute(answer, (forecast,)).fetchone()[0] == "queued":
            assert time.monotonic() < deadline, worker.output
            time.sleep(0.1)
        assert conn.execute(answer, (forecast,)).fetchone() == ("completed", None)
        assert conn.execute("SELECT count(*) FROM sfq_workers").fetchone()[0] >= 1  # its heartbeat
        # Another rescue round and heartbeat, after everything: the worker's heartbeat (each round's
        # first step) is seen twice after now, so a whole round has run in between.
        since, beats = conn.execute("SELECT now()").fetchone()[0], set()
        deadline = time.monotonic() + 60
        while len(beats) < 2:
            beats |= {
                seen
                for (seen,) in conn.execute(
                    "SELECT last_seen FROM sfq_workers WHERE pid = %s AND last_seen > %s", (worker.pid, since)
                )
            }
            assert time.monotonic() < deadline, worker.output
            time.sleep(0.05)
    assert "permission denied" not in worker.output and "beat failed" not in worker.output, worker.output

    refused(
        roles.login["sfq_worker"],
        "DROP TABLE models",
        "ALTER TABLE models ADD COLUMN extra int",
        f"DELETE FROM models WHERE id = {trained}",
        f"DELETE FROM model_artifacts WHERE model_id = {trained}",
        "TRUNCATE models",
        f"UPDATE models SET spec_extra = '{{}}' WHERE id = {trained}",
        f"UPDATE models SET fingerprint = 'x' WHERE id = {trained}",
        "INSERT INTO training_requests (symbol) VALUES ('AAPL')",
        "INSERT INTO models (fingerprint, spec_extra) VALUES ('x', '{}')",
        f"SELECT sfq_cancel_model({trained})",
        'SELECT sfq_submit(\'{"symbol": "AAPL"}\')',
        "CREATE TABLE worker_table (x int)",
    )


def test_api_role_serves_every_endpoint_and_cannot_write_tables(roles, start_api, start_worker):
    spec = {"symbol": "MSFT", **FAST, "hyperparameters": {"alpha": 2.0}}
    with httpx.Client(base_url=start_api(url=roles.login["sfq_api"]), timeout=60) as api:
        created = api.post("/train", json=spec)
        assert created.status_code == 201, created.text
        model_id = created.json()["model_id"]
        assert api.post("/train", json=spec).json() == {**created.json(), "deduplicated": True}

        # Every operation, while no worker runs; then the queued models they made are cancelled.
        made = [r["model_id"] for r in api.post("/train/batch", json=spec).json()["models"]]
        made.append(api.post(f"/retrain/{model_id}", json={"force": True}).json()["model_id"])
        child = api.post(
            "/api/train_with_parent", json={"parent_model_id": model_id, "overrides": {"horizon": 2}}
        )
        assert child.status_code == 201, child.text
        made.append(child.json()["model_id"])
        sweep = api.post("/sweeps", json={"base": spec, "grid": {"horizon": [3, 4]}})
        assert sweep.status_code == 201, sweep.text
        shown = api.get(f"/sweeps/{sweep.json()['sweep_id']}")
        assert shown.status_code == 200 and len(shown.json()["rows"]) == 2, shown.text
        made += [row["model_id"] for row in shown.json()["rows"]]
        for other in set(made) - {model_id}:  # the batch's close model is the first one, deduplicated
            cancelled = api.post(f"/models/{other}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text

        worker = start_worker(1, url=roles.login["sfq_worker"])
        with psycopg.connect(roles.owner, autocommit=True) as conn:
            assert wait_for_models(conn, [model_id])[model_id]["status"] == "completed"
            wait_for_jobs(conn)
        model = api.get(f"/models/{model_id}")
        assert model.status_code == 200 and model.json()["status"] == "completed", model.text
        for path in ("features", "predictions", "lineage", "simulations", "artifact"):
            assert api.get(f"/models/{model_id}/{path}").status_code == 200, path
        assert api.get("/models", params={"sort": "ic"}).json()["total"] >= 1
        assert api.get("/metrics").status_code == 200
        # A worker answers within 120 s even on a loaded machine (its first forecast imports scikit-learn).
        forecast = api.post(f"/models/{model_id}/predict?wait=120", timeout=150)
        assert forecast.status_code == 200 and forecast.json()["status"] == "completed", forecast.text
        assert api.get(f"/forecasts/{forecast.json()['id']}").status_code == 200
        simulation = api.post(
            "/simulate?wait=120", json={"model_id": model_id, "strategy": "long_only"}, timeout=150
        )
        assert simulation.status_code == 200 and simulation.json()["status"] == "completed", simulation.text
        assert api.get(f"/simulations/{simulation.json()['id']}").status_code == 200
        assert api.post(f"/models/{model_id}/cancel").status_code == 409

        # Cancelling a running model: the worker (its role) aborts the job and records the end.
        slow = {"symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": {"n_estimators": 3000}}
        running = api.post("/train", json=slow).json()["model_id"]
        # Well into training, as in test_operations.py: a phase past loading the bars on the model.
        deadline = time.monotonic() + 120
        while True:
            shown = api.get(f"/models/{running}").json()
            if shown["status"] == "running" and (shown["progress"] or {}).get("phase") not in (
                None,
                "starting",
                "loading",
            ):
                break
            assert time.monotonic() < deadline, (shown, worker.output)
            time.sleep(0.05)
        assert api.post(f"/models/{running}/cancel").json()["status"] == "cancelled"
        with psycopg.connect(roles.owner, autocommit=True) as conn:
            assert wait_for_jobs(conn, timeout=60)[running] == "aborted", worker.output

    refused(
        roles.login["sfq_api"],
        f"UPDATE models SET status = 'failed' WHERE id = {model_id}",
        f"DELETE FROM models WHERE id = {model_id}",
        "TRUNCATE models",
        "DROP TABLE models",
        "INSERT INTO models (fingerprint, spec_extra) VALUES ('x', '{}')",
        "INSERT INTO training_requests (symbol) VALUES ('AAPL')",
        "INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('training', 'train_model')",
        "UPDATE procrastinate_jobs SET status = 'failed'",
        f"SELECT sfq_model({model_id}, true)",
        "SELECT procrastinate_cancel_job_v1(1, true, false)",
        "SELECT sfq_rescue_stalled_jobs(1, 3)",
        "CREATE TABLE api_table (x int)",
    )


def test_submitter_moves_a_candidate_alias_but_never_production(roles):
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        (model,) = insert_request(conn, {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300})[:1]
        conn.execute("UPDATE models SET status = 'completed' WHERE id = %s", (model,))
    with psycopg.connect(roles.login["sfq_submitter"], autocommit=True) as conn:
        moved = conn.execute(
            "SELECT moved_by, db_role FROM sfq_move_alias('rolecheck', 'candidate', %s, 'try')", (model,)
        )
        assert moved.fetchone() == (roles.name["sfq_submitter"], roles.name["sfq_submitter"])
        with pytest.raises(errors.InsufficientPrivilege, match="may not move a production alias"):
            conn.execute("SELECT sfq_move_alias('rolecheck', 'production', %s, 'try')", (model,))
        refused(
            roles.login["sfq_submitter"],
            "INSERT INTO strategy_aliases VALUES ('rolecheck', 'production', 1, now())",
        )
    with psycopg.connect(roles.login["sfq_api"], autocommit=True) as conn:
        conn.execute(
            "SELECT sfq_move_alias('rolecheck', 'production', %s, 'reviewed', 'alice', 'http')", (model,)
        )
        history = conn.execute(
            "SELECT alias, moved_by, via FROM strategy_alias_history WHERE strategy = 'rolecheck' ORDER BY id"
        ).fetchall()
    assert history == [("candidate", roles.name["sfq_submitter"], "sql"), ("production", "alice", "http")]
    refused(
        roles.login["sfq_api"],
        "DELETE FROM strategy_alias_history",
        "UPDATE strategy_aliases SET model_id = 1",
    )


def test_retrain_policies_by_role_and_a_worker_role_decides_a_retrain(roles):
    """A submitter sets a candidate's policy but never production's; the worker role runs the due check
    and, recording its retrain's end, moves production (sfq_retrain_ended runs as the owner)."""
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        earlier = conn.execute("SELECT ts FROM bars WHERE symbol = 'AAPL' ORDER BY ts DESC OFFSET 5 LIMIT 1")
        spec = {  # a spec no other test trains: its retrain is deduplicated to no other model
            "symbol": "AAPL",
            "algorithm": "Ridge",
            "train_window": 301,
            "data_end": earlier.fetchone()[0],
        }
        (model,) = insert_request(conn, spec)[:1]
        conn.execute(
            "UPDATE models SET status = 'completed', metrics = '{\"cv_ic_mean\": 0.1}' WHERE id = %s",
            (model,),
        )
        for alias in ("production", "candidate"):
            conn.execute("SELECT sfq_move_alias('rolepolicy', %s, %s, 'first')", (alias, model))
    every_three = Jsonb({"kind": "every_n_bars", "n": 3})
    with psycopg.connect(roles.login["sfq_submitter"], autocommit=True) as conn:
        conn.execute("SELECT sfq_set_retrain_policy('rolepolicy', 'candidate', %s)", (every_three,))
        with pytest.raises(errors.InsufficientPrivilege, match="may not set the retrain policy"):
            conn.execute("SELECT sfq_set_retrain_policy('rolepolicy', 'production', %s)", (every_three,))
    with psycopg.connect(roles.login["sfq_api"], autocommit=True) as conn:
        hourly = Jsonb({"kind": "cron", "cron": "0 * * * *"})
        conn.execute(
            "SELECT sfq_set_retrain_policy('rolepolicy', 'production', %s, 1.0, 'cv_ic', 'alice', 'http')",
            (hourly,),
        )
    with psycopg.connect(roles.login["sfq_worker"], autocommit=True) as conn:
        (retrained,) = conn.execute(
            "SELECT model_id FROM sfq_retrain_due(now() + interval '2 hours') WHERE strategy = 'rolepolicy'"
        ).fetchone()
        conn.execute("UPDATE models SET status = 'running', attempts = 1 WHERE id = %s", (retrained,))
        conn.execute(
            "UPDATE models SET status = 'completed', metrics = '{\"cv_ic_mean\": 0.05}' WHERE id = %s",
            (retrained,),
        )
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        decided = conn.execute(
            "SELECT verdict, champion_value, challenger_value FROM strategy_retrains WHERE model_id = %s",
            (retrained,),
        ).fetchone()
        assert decided == ("promoted", 0.1, 0.05)
        moved = conn.execute(
            "SELECT model_id, moved_by, db_role FROM strategy_alias_history"
            " WHERE strategy = 'rolepolicy' AND alias = 'production' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert moved == (retrained, "retrain-policy", roles.name["sfq_worker"])
    refused(roles.login["sfq_submitter"], "UPDATE retrain_policies SET tolerance = 100")
