"""`sfq` on the command line: submit (dedup, rejections, --wait with a real worker), models, model, and
the one-line errors. The CLI runs as a real subprocess against the run's database; nothing is mocked.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from tests.conftest import run_sfq

# Fast to train: a linear model on a short window.
SPEC = ["--symbol", "AAPL", "--algorithm", "Ridge", "--train-window", "300", "--test-window", "60"]
SUBMITTED = re.compile(r"^model (\d+) fingerprint ([0-9a-f]{64})$")
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM training_requests), (SELECT count(*) FROM models),"
        " (SELECT count(*) FROM procrastinate_jobs)"
    ).fetchone()


def submit_ok(database: str, *extra: str) -> tuple[int, str]:
    result = run_sfq("submit", *SPEC, "--param", "alpha=2", *extra, url=database)
    assert result.returncode == 0, result.stderr
    match = SUBMITTED.match(result.stdout.strip())
    assert match, result.stdout
    return int(match[1]), match[2]


def test_submit_prints_the_model_and_records_the_request(clean, database):
    result = run_sfq("submit", *SPEC, "--param", "alpha=2", url=database)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    match = SUBMITTED.match(result.stdout.strip())
    assert match, result.stdout
    model_id, fingerprint = int(match[1]), match[2]

    requests = clean.execute(
        "SELECT via, model_id, fingerprint, deduplicated FROM training_requests ORDER BY id"
    ).fetchall()
    assert requests == [("cli", model_id, fingerprint, False)]
    model = clean.execute(
        "SELECT fingerprint, status::text, symbol, algorithm, hyperparameters->'alpha', train_window,"
        " test_window FROM models WHERE id = %s",
        (model_id,),
    ).fetchone()
    assert model == (fingerprint, "queued", "AAPL", "Ridge", 2.0, 300, 60)
    jobs = clean.execute("SELECT args FROM procrastinate_jobs").fetchall()
    assert jobs == [({"model_id": model_id},)]


def test_same_submit_is_deduplicated(clean, database):
    model_id, fingerprint = submit_ok(database)
    again = run_sfq("submit", *SPEC, "--param", "alpha=2", url=database)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"model {model_id} fingerprint {fingerprint} (deduplicated: an identical model exists)"
    )
    # 2.0 is the same alpha as 2 (canonical hyperparameters): the same model again.
    third = run_sfq("submit", *SPEC, "--param", "alpha=2.0", url=database)
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip().startswith(f"model {model_id} fingerprint {fingerprint} (deduplicated")

    assert counts(clean) == (3, 1, 1)  # every request recorded; one model, one job
    assert clean.execute("SELECT deduplicated FROM training_requests ORDER BY id").fetchall() == [
        (False,),
        (True,),
        (True,),
    ]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--symbol", "AAPL", "--horizon", "0"], r"\bhorizon: "),
        (["--symbol", "AAPL", "--algorithm", "SVM"], r"\balgorithm: 'SVM'"),
        (
            ["--symbol", "AAPL", "--algorithm", "RandomForest", "--param", "max_depht=3"],
            r"\bhyperparameters\.max_depht: unknown parameter",
        ),
        (["--symbol", "AAPL", "--hyperparameters", "{not json"], r"\bhyperparameters: not valid JSON"),
        (["--symbol", "AAPL", "--features", "nope"], r"\bfeatures: unknown nope"),
        (["--symbol", "AAPL", "--data-end", "yesterday-ish"], r"\bdata_end: "),
        pytest.param(
            ["--symbol", "AAPL", "--alpha-grid", "x"], r"alpha[_-]grid", id="alpha-grid-not-a-number"
        ),
        pytest.param(
            ["--symbol", "AAPL", "--hyperparameters", "[1]", "--param", "alpha=2"],
            r"\bhyperparameters\b",
            id="param-on-non-object-hyperparameters",
        ),
    ],
)
def test_bad_request_is_one_line_naming_the_field(conn, database, args, field):
    before = counts(conn)
    result = run_sfq("submit", *args, url=database)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sfq: "), lines[0]
    assert re.search(field, lines[0]), lines[0]
    assert result.stdout == ""
    assert counts(conn) == before  # nothing inserted


def test_submit_wait_prints_completed_and_metrics(clean, database, start_worker):
    worker = start_worker()
    result = run_sfq(
        "submit", *SPEC, "--param", "alpha=2", "--wait", "--timeout", "120", url=database, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    model_id = int(SUBMITTED.match(lines[0])[1])
    assert f"model {model_id} completed" in lines
    metrics = json.loads(lines[-1])
    assert set(metrics) == {"rmse", "r2", "directional_accuracy", "ic"}
    assert metrics["rmse"] > 0 and 0 <= metrics["directional_accuracy"] <= 1
    status, stored, worker_pid = clean.execute(
        "SELECT status::text, metrics, worker_pid FROM models WHERE id = %s", (model_id,)
    ).fetchone()
    assert status == "completed"
    assert stored["rmse"] == metrics["rmse"]
    assert worker_pid == worker.pid

    board = run_sfq("models", "--sort", "r2", url=database)
    assert board.returncode == 0, board.stderr
    row = next(line for line in board.stdout.splitlines() if line.split()[0] == str(model_id))
    assert row.split()[1] == "completed"
    assert f"{metrics['rmse']:.5f}" in row and f":{worker.pid}" in row


def test_submit_wait_without_bars_fails_with_the_reason(clean, database, start_worker):
    start_worker()
    result = run_sfq("submit", "--symbol", "NOPE", "--wait", "--timeout", "120", url=database, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    model_id = int(SUBMITTED.match(result.stdout.splitlines()[0])[1])
    assert re.search(rf"^model {model_id} failed: .*no bars for NOPE", result.stdout, re.MULTILINE), (
        result.stdout
    )
    assert "rmse" not in result.stdout
    status, error = clean.execute(
        "SELECT status::text, error FROM models WHERE id = %s", (model_id,)
    ).fetchone()
    assert status == "failed"
    assert "no bars" in error


def test_models_and_model(clean, database):
    model_id, fingerprint = submit_ok(database)
    board = run_sfq("models", url=database)
    assert board.returncode == 0, board.stderr
    header, *rows = board.stdout.strip().splitlines()
    assert header.split() == [
        "id",
        "status",
        "symbol",
        "algorithm",
        "target",
        "dir.acc",
        "base",
        "ic",
        "r2",
        "rmse",
        "worker",
    ]
    assert len(rows) == 1
    assert rows[0].split()[:5] == [str(model_id), "queued", "AAPL", "Ridge", "close/log_return"]

    shown = run_sfq("model", str(model_id), url=database)
    assert shown.returncode == 0, shown.stderr
    model = json.loads(shown.stdout)
    assert model["id"] == model_id
    assert model["status"] == "queued"
    assert model["fingerprint"] == fingerprint
    assert (model["symbol"], model["algorithm"], model["hyperparameters"]["alpha"]) == ("AAPL", "Ridge", 2.0)

    missing = run_sfq("model", "999999", url=database)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "sfq: no model with id 999999"
    assert missing.stdout == ""


@pytest.mark.parametrize(
    "command",
    [["models"], ["model", "1"], ["submit", "--symbol", "AAPL"], ["bars", "list"], ["db", "upgrade"]],
    ids=" ".join,
)
def test_unreachable_database_is_a_clean_error(command):
    result = run_sfq(*command, url=UNREACHABLE, timeout=60)
    assert result.returncode == 1, result
    assert result.stderr.startswith("sfq: cannot reach the database"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_database_without_schema_says_to_upgrade(make_database):
    url = make_database("sfq_test_empty")
    result = run_sfq("models", url=url)
    assert result.returncode == 1, result
    assert result.stderr.startswith("sfq: the database has no sfq schema yet; run `sfq db upgrade`")
    assert "Traceback" not in result.stderr


def test_worker_on_a_database_without_schema_says_to_upgrade(make_database):
    url = make_database("sfq_test_empty_worker")
    result = run_sfq("worker", "1", url=url, timeout=60)
    assert result.returncode == 1, result
    assert (
        "cannot start: database 'sfq_test_empty_worker_" in result.stderr
        and "has no sfq schema" in result.stderr
    )
    assert "run `sfq db upgrade`" in result.stderr and "Traceback" not in result.stderr
