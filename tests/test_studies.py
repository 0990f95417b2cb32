"""Studies against real workers and the run's database: a bad study is refused naming its field and
creates nothing; a study runs to its budget on the workers with trials pruned between folds (stopped,
their folds kept, never completed); a point asked again reuses the live model; evolution records each
trial's parent as its model's parent; a study whose every trial fails stops with the reasons; a worker
killed mid-trial loses no trial and counts none twice; stop asks for no more."""

from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest

from tests.conftest import insert_request, run_sfq, wait_for_jobs

FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 400, "test_window": 100}
ALPHA = {"type": "float", "low": 0.001, "high": 100.0, "log": True}


def create(conn, study: dict) -> int:
    return conn.execute("SELECT id FROM sfq_create_study(%s::jsonb)", (json.dumps(study),)).fetchone()[0]


def wait_for_study(conn, study_id: int, timeout: float = 240) -> dict:
    """Until the study has ended and none of its trials runs; its row and its trials by state."""
    deadline = time.monotonic() + timeout
    while True:
        state, reason = conn.execute(
            "SELECT state, reason FROM studies WHERE id = %s", (study_id,)
        ).fetchone()
        states = dict(
            conn.execute(
                "SELECT state, count(*) FROM study_trials WHERE study_id = %s GROUP BY state", (study_id,)
            ).fetchall()
        )
        if state != "running" and not states.get("running"):
            return {"state": state, "reason": reason, "trials": states}
        assert time.monotonic() < deadline, f"study {study_id} still {state} with {states}"
        time.sleep(0.2)


BAD = [
    ({"space": {}}, "space", "non-empty"),
    ({"space": {"horizon": {"type": "int", "low": 5, "high": 2}}}, "space.horizon.low", "below high"),
    ({"space": {"horizon": {"type": "int", "low": 1}}}, "space.horizon.high", "bounded"),
    (
        {"space": {"horizon": {"type": "categorical", "choices": ["a", "b"]}}},
        "space.horizon.choices",
        "integer",
    ),
    (
        {"space": {"features": {"type": "categorical", "choices": [["ret_1"], 3]}}},
        "space.features.choices",
        "",
    ),
    (
        {"space": {"hyperparameters.alpha": {"type": "float", "low": -1, "high": 1, "log": True}}},
        "space.hyperparameters.alpha.low",
        "positive",
    ),
    (
        {"space": {"hyperparameters.n_estimators": {"type": "int", "low": 10, "high": 50}}},
        "space.hyperparameters.n_estimators.low",
        "unknown parameter",
    ),
    ({"space": {"nonsense": {"type": "int", "low": 1, "high": 2}}}, "space.nonsense", "not a field"),
    ({"objective": "ic"}, "objective", "held-out test window"),
    ({"objective": None}, "objective", "required"),
    ({"objective": ["cv_ic", "cv_rmse"], "pruner": "median"}, "pruner", "one value per fold"),
    ({"objective": ["cv_ic", "cv_rmse"], "pruner": "none", "sampler": "cmaes"}, "sampler", "one objective"),
    (
        {"sampler": "grid", "space": {"hyperparameters.alpha": ALPHA}},
        "space.hyperparameters.alpha",
        "discrete",
    ),
    ({"sampler": "annealing"}, "sampler", "must be one of"),
    ({"pruner": "patient"}, "pruner", "must be one of"),
    ({"n_trials": None}, "n_trials", "budget"),
    ({"n_trials": 0}, "n_trials", "from 1"),
    ({"base": {"algorithm": "Ridge"}}, "base.symbol", "must not be null"),
    ({"colour": "blue"}, "colour", "not a study field"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD, ids=[case[1] for case in BAD])
def test_a_bad_study_is_refused_naming_its_field_and_nothing_is_created(clean, change, field, words):
    study = {
        "base": FAST,
        "space": {"hyperparameters.alpha": ALPHA},
        "objective": "cv_ic",
        "n_trials": 5,
        **change,
    }
    study = {key: value for key, value in study.items() if value is not None}
    with pytest.raises(psycopg.DataError) as refused:
        create(clean, study)
    assert refused.value.diag.column_name == field
    assert words in refused.value.diag.message_primary
    assert clean.execute("SELECT count(*) FROM studies").fetchone()[0] == 0
    assert clean.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


def test_http_study_create_show_stop_and_a_refusal_naming_the_field(clean, api):
    bad = {"type": "int", "low": 3, "high": 1}
    refused = api.post("/studies", json={"base": FAST, "space": {"horizon": bad}, "objective": "cv_ic"})
    assert refused.status_code == 422
    assert refused.json()["detail"] == {"field": "space.horizon.low"}
    created = api.post(
        "/studies",
        json={"base": FAST, "space": {"hyperparameters.alpha": ALPHA}, "objective": "cv_ic", "n_trials": 3},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["sampler"], body["pruner"], body["objectives"], body["directions"]) == (
        "tpe",
        "median",
        ["cv_ic"],
        ["maximize"],
    )
    shown = api.get(body["url"]).json()
    assert (shown["state"], shown["progress"]["trials"], shown["trials"]) == ("running", 0, [])
    stopped = api.post(f"/studies/{body['study_id']}/stop").json()
    assert (stopped["state"], stopped["reason"]) == ("stopped", "stopped on request")
    assert api.get("/studies/999999").status_code == 404
    assert api.get(f"/studies/{body['study_id']}?importances=maybe").json()["detail"] == {
        "field": "importances"
    }


def test_a_study_runs_on_the_workers_and_prunes_hopeless_trials_between_folds(clean, database, start_worker):
    study_id = create(
        clean,
        {
            "base": FAST,
            "space": {"hyperparameters.alpha": ALPHA, "horizon": {"type": "int", "low": 1, "high": 5}},
            "objective": "cv_ic",
            "sampler": "tpe",
            "pruner": "median",
            "n_trials": 14,
            "max_parallel": 1,  # one at a time: the same trials, the same pruning, every run
        },
    )
    start_worker(1)
    ended = wait_for_study(clean, study_id)
    assert ended["state"] == "finished" and ended["reason"] == "14 trials of 14", ended
    assert sum(ended["trials"].values()) == 14
    assert ended["trials"].get("pruned", 0) >= 1, ended

    pruned = clean.execute(
        "SELECT m.status::text, m.error, jsonb_array_length(m.fold_metrics), t.fold_values, m.cv_folds,"
        " (SELECT array_agg(outcome) FROM model_attempts a WHERE a.model_id = m.id)"
        " FROM study_trials t JOIN models m ON m.id = t.model_id"
        " WHERE t.study_id = %s AND t.state = 'pruned'",
        (study_id,),
    ).fetchall()
    for status, error, folds_kept, fold_values, folds, outcomes in pruned:
        assert status == "cancelled" and outcomes == ["cancelled"]  # stopped, never completed
        assert error.startswith(f"pruned by study {study_id} (median pruner) after CV fold ")
        assert 2 <= folds_kept < folds  # not before fold 2, and before the last
        assert len(fold_values) == folds_kept
    complete = clean.execute(
        "SELECT t.\"values\"[1], (m.metrics->>'cv_ic_mean')::float8,"
        " (SELECT count(*) FROM jsonb_object_keys(t.fold_values))"
        " FROM study_trials t JOIN models m ON m.id = t.model_id"
        " WHERE t.study_id = %s AND t.state = 'complete'",
        (study_id,),
    ).fetchall()
    assert complete and all(value == pytest.approx(mean) and n == 5 for value, mean, n in complete)

    # Optuna's own record (its journal, replayed) says the same as sfq's trials.
    from optuna.storages.journal import JournalStorage

    from workers.daemon.studies import OPTUNA_STUDY_ID, Journal

    with psycopg.connect(database, autocommit=True) as conn:
        journal = Journal(study_id)
        journal.conn = conn
        trials = JournalStorage(journal).get_all_trials(OPTUNA_STUDY_ID)
    states = {t.number: t.state.name.lower() for t in trials}
    recorded = dict(clean.execute("SELECT number, state FROM study_trials WHERE study_id = %s", (study_id,)))
    assert states == {n: {"complete": "complete", "pruned": "pruned"}[s] for n, s in recorded.items()}


def test_a_point_asked_again_reuses_the_live_model(clean, start_worker):
    study_id = create(
        clean,
        {
            "base": FAST,
            "space": {"hyperparameters.alpha": {"type": "categorical", "choices": [0.5, 5.0]}},
            "objective": "cv_ic",
            "sampler": "random",
            "pruner": "none",
            "n_trials": 5,
            "max_parallel": 1,
        },
    )
    start_worker(1)
    ended = wait_for_study(clean, study_id)
    assert ended["trials"].get("reused", 0) >= 3, ended  # 5 trials of 2 points, one at a time
    models = clean.execute(
        "SELECT count(DISTINCT model_id), count(*) FILTER (WHERE state = 'reused' AND \"values\" IS NOT NULL)"
        " FROM study_trials WHERE study_id = %s",
        (study_id,),
    ).fetchone()
    assert models == (2, ended["trials"]["reused"])
    trained = clean.execute("SELECT count(*) FROM models WHERE status = 'completed'").fetchone()[0]
    assert trained == 2


def test_evolution_mutates_good_trials_and_records_each_parent(clean, api, start_worker):
    study_id = create(
        clean,
        {
            "base": FAST,
            "space": {
                "hyperparameters.alpha": ALPHA,
                "horizon": {"type": "int", "low": 1, "high": 10},
                "cv_strategy": {"type": "categorical", "choices": ["expanding", "sliding"]},
            },
            "objective": "cv_ic",
            "sampler": "evolution",
            "pruner": "none",
            "n_trials": 14,
            "max_parallel": 1,
        },
    )
    start_worker(1)
    assert wait_for_study(clean, study_id)["state"] == "finished"
    evolved = clean.execute(
        "SELECT t.number, t.parent_number, t.mutation, m.parent_model_id, p.model_id, t.params, pt.params"
        " FROM study_trials t JOIN models m ON m.id = t.model_id"
        " JOIN study_trials p ON p.study_id = t.study_id AND p.number = t.parent_number"
        " JOIN study_trials pt ON pt.study_id = t.study_id AND pt.number = t.parent_number"
        " WHERE t.study_id = %s AND t.parent_number IS NOT NULL ORDER BY t.number",
        (study_id,),
    ).fetchall()
    assert [row[0] for row in evolved] == [10, 11, 12, 13]  # random for the first 10 (the population)
    for number, parent, mutation, parent_model, parents_model, params, parent_params in evolved:
        assert parent < number and parent_model == parents_model
        changed = {k for k in params if params[k] != parent_params.get(k)} - {"crossover_with"}
        assert set(mutation) - {"crossover_with"} <= set(params) and changed, mutation
    child_model = clean.execute(
        "SELECT model_id FROM study_trials WHERE study_id = %s AND number = 13", (study_id,)
    ).fetchone()[0]
    lineage = api.get(f"/models/{child_model}/lineage").json()
    assert evolved[-1][3] in [m["id"] for m in lineage["models"]]
    assert {"id": child_model, "parent_model_id": evolved[-1][3]}.items() <= lineage["models"][-1].items()
    shown = api.get(f"/studies/{study_id}").json()
    assert [m["number"] for m in shown["mutations"]] == [10, 11, 12, 13]


def test_a_study_whose_every_trial_fails_stops_with_the_reasons(clean, start_worker):
    # 30 bars: enough for a request to be accepted, too few to train on.
    clean.execute(
        "INSERT INTO bars (symbol, timeframe, ts, open, high, low, close, volume)"
        " SELECT 'TINY', '1d', t, 10, 11, 9, 10 + random(), 1000"
        " FROM generate_series(timestamptz '2024-01-01', '2024-01-30', interval '1 day') t"
    )
    study_id = create(
        clean,
        {
            "base": {**FAST, "symbol": "TINY"},
            "space": {"hyperparameters.alpha": ALPHA},
            "objective": "cv_ic",
            "n_trials": 50,
            "max_parallel": 2,
        },
    )
    start_worker(1)
    ended = wait_for_study(clean, study_id)
    assert ended["state"] == "failed", ended
    assert ended["reason"].startswith("every trial failed ("), ended
    errors = clean.execute(
        "SELECT DISTINCT error FROM study_trials WHERE study_id = %s", (study_id,)
    ).fetchall()
    assert all(error in ended["reason"] for (error,) in errors), (errors, ended)
    assert sum(ended["trials"].values()) < 10  # it stopped asking


def test_a_killed_worker_loses_no_trial_and_counts_none_twice(clean, start_worker):
    study_id = create(
        clean,
        {
            "base": {**FAST, "algorithm": "RandomForest", "hyperparameters": {"n_estimators": 150}},
            "space": {"hyperparameters.max_features": {"type": "float", "low": 0.2, "high": 1.0}},
            "objective": "cv_ic",
            "pruner": "none",
            "n_trials": 6,
            "max_parallel": 2,
        },
    )
    quick = {"SFQ_HEARTBEAT_S": "1", "SFQ_RESCUE_AFTER_S": "3"}
    victim = start_worker(1, **quick)
    start_worker(2, **quick)
    deadline = time.monotonic() + 120
    while not (
        running := clean.execute(
            "SELECT m.id FROM models m JOIN study_trials t ON t.model_id = m.id"
            " WHERE t.study_id = %s AND m.status = 'running' AND m.worker_pid = %s",
            (study_id, victim.pid),
        ).fetchone()
    ):
        assert time.monotonic() < deadline, victim.output
        time.sleep(0.05)
    victim.popen.send_signal(signal.SIGKILL)
    ended = wait_for_study(clean, study_id)
    assert ended == {"state": "finished", "reason": "6 trials of 6", "trials": {"complete": 6}}, ended
    # The victim's trial was lost with it and trained again: its attempt on the victim ends 'lost' (on a
    # loaded machine a late heartbeat may have handed on another trial too: counted there, not here).
    outcomes = clean.execute(
        "SELECT array_agg(a.outcome ORDER BY a.attempt), m.status FROM model_attempts a"
        " JOIN models m ON m.id = a.model_id WHERE a.model_id = %s GROUP BY m.status",
        running,
    ).fetchone()
    assert "lost" in outcomes[0] and outcomes[1] == "completed", outcomes
    assert (
        clean.execute(
            "SELECT count(DISTINCT model_id) FROM study_trials WHERE study_id = %s", (study_id,)
        ).fetchone()[0]
        == 6
    )
    wait_for_jobs(clean, timeout=60)


def test_cli_study_create_wait_and_show(clean, database, start_worker, tmp_path):
    start_worker(1)
    path = tmp_path / "study.json"
    path.write_text(
        json.dumps(
            {"base": FAST, "space": {"hyperparameters.alpha": ALPHA}, "objective": "cv_rmse", "n_trials": 4}
        )
    )
    done = run_sfq("study", "create", str(path), "--wait", "--timeout", "200", url=database, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "sampler tpe, pruner median, objective cv_rmse, budget 4 trials" in done.stdout
    assert "finished (4 trials of 4)" in done.stdout and "objective cv_rmse (minimize)" in done.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"base": FAST, "space": {"horizon": {"type": "int", "low": 1}}, "objective": "cv_ic"})
    )
    refused = run_sfq("study", "create", str(bad), url=database)
    assert (
        refused.returncode != 0
        and "space.horizon.high" in refused.stderr
        and "Traceback" not in refused.stderr
    )


def test_a_grid_study_trains_every_point_once(clean, start_worker):
    study_id = create(
        clean,
        {
            "base": FAST,
            "space": {
                "horizon": {"type": "int", "low": 1, "high": 3},
                "features": {"type": "categorical", "choices": [["ret_1", "vol_5"], ["ret_5", "vol_20"]]},
            },
            "objective": "cv_ic",
            "sampler": "grid",
            "pruner": "none",
            "max_parallel": 2,
        },
    )
    assert clean.execute("SELECT n_trials FROM studies WHERE id = %s", (study_id,)).fetchone() == (6,)
    start_worker(1)
    assert wait_for_study(clean, study_id) == {
        "state": "finished",
        "reason": "6 trials of 6",
        "trials": {"complete": 6},
    }
    points = clean.execute(
        "SELECT count(DISTINCT params), count(DISTINCT model_id) FROM study_trials WHERE study_id = %s",
        (study_id,),
    ).fetchone()
    assert points == (6, 6)


def test_every_trial_end_defers_an_advance_of_its_own(clean):
    """An advance already queued may be taken before a trial's end commits, and miss it: the end must
    bring its own, committed with it (a queueing lock once lost a trial's end, and the study waited)."""
    study_id = create(
        clean, {"base": FAST, "space": {"hyperparameters.alpha": ALPHA}, "objective": "cv_ic", "n_trials": 3}
    )
    model = insert_request(clean, {**FAST, "horizon": 2})[0]
    clean.execute(
        "INSERT INTO study_trials (study_id, number, model_id, state, params)"
        " VALUES (%s, 0, %s, 'running', '{}')",
        (study_id, model),
    )
    advances = "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'advance_study' AND status = 'todo'"
    assert clean.execute(advances).fetchone() == (1,)  # the study's first
    with clean.transaction():
        clean.execute("UPDATE models SET status = 'completed' WHERE id = %s", (model,))
        assert clean.execute(advances).fetchone() == (2,)
    assert clean.execute(
        "SELECT args->>'study_id', lock FROM procrastinate_jobs"
        " WHERE task_name = 'advance_study' ORDER BY id DESC LIMIT 1"
    ).fetchone() == (str(study_id), f"study:{study_id}")
