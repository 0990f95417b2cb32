"""The HTTP API, served by a real `sfq api` process against the run's database."""

from __future__ import annotations

import asyncio

import httpx

from queue_app import gateway
from queue_app.api.gathering import Gathering
from queue_app.errors import Rejected

FAST = {"algorithm": "Ridge", "train_window": 300, "test_window": 60}


def test_train_answers_201_then_200_deduplicated(clean, api):
    first = api.post("/train", json={"symbol": "AAPL", **FAST})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["deduplicated"] is False and body["url"].endswith(f"/models/{body['model_id']}")
    again = api.post("/train", json={"symbol": "AAPL", **FAST})
    assert again.status_code == 200
    assert again.json() == {**body, "deduplicated": True}


def test_bad_body_is_422_naming_the_field_and_changes_nothing(clean, api):
    cases = [
        ({"symbol": "AAPL", "horizon": 0}, "horizon"),
        ({"symbol": "AAPL", "horizon": "soon"}, "horizon"),
        ({"horizon": 2}, "symbol"),
        (
            {"symbol": "AAPL", "algorithm": "RandomForest", "hyperparameters": {"n_estimators": 0}},
            "hyperparameters.n_estimators",
        ),
        ({"symbol": "AAPL", "lookback": 5}, "lookback"),
        ({"symbol": "AAPL", "alpha_grid": [0.1]}, "alpha_grid"),
        ({"symbol": "AAPL", "execution_lag": -1}, "execution_lag"),
        (
            {"symbol": "AAPL", "evaluation": {"kind": "walk_forward", "refit_every": 0}},
            "evaluation.refit_every",
        ),
        (
            {"symbol": "AAPL", "evaluation": {"kind": "walk_forward", "start": "2030-01-01"}},
            "evaluation.start",
        ),
        (
            {"symbol": "AAPL", "evaluation": {"kind": "walk_forward", "start": "2000-03-01"}},
            "evaluation.start",
        ),
    ]
    for body, field in cases:
        response = api.post("/train", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()
        assert error["detail"]["field"] == field and field in error["error"], error
    assert api.post("/train", content=b"{not json").status_code == 400
    assert api.post("/train", json=[1, 2]).status_code == 422
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == 0


def test_get_model_and_unknown_ids(clean, api):
    created = api.post("/train", json={"symbol": "MSFT", **FAST}).json()
    model = api.get(f"/models/{created['model_id']}").json()
    assert (model["status"], model["symbol"], model["algorithm"], model["fingerprint"]) == (
        "queued",
        "MSFT",
        "Ridge",
        created["fingerprint"],
    )
    assert model["spec"]["train_window"] == 300 and model["hyperparameters"]["alpha"] == 1.0
    assert "spec_extra" not in model  # how the row stores the spec (0031), not part of the model
    missing = api.get("/models/999999")
    assert missing.status_code == 404 and missing.json()["error"] == "no model with id 999999"
    assert api.get("/models/abc").status_code == 404
    assert api.get("/nowhere").json()["error"] == "Not Found"


def test_list_filters_sorts_and_paginates(clean, api):
    ids = {
        s: api.post("/train", json={"symbol": s, **FAST}).json()["model_id"] for s in ("AAPL", "MSFT", "IBM")
    }
    clean.execute("UPDATE models SET status = 'completed', metrics = jsonb_build_object('r2', id * 0.1)")
    listing = api.get("/models", params={"limit": 2}).json()
    assert listing["total"] == 3 and [m["id"] for m in listing["models"]] == [ids["IBM"], ids["MSFT"]]
    page2 = api.get("/models", params={"limit": 2, "offset": 2}).json()
    assert [m["id"] for m in page2["models"]] == [ids["AAPL"]]
    assert [m["symbol"] for m in api.get("/models", params={"symbol": "msft"}).json()["models"]] == ["MSFT"]
    assert api.get("/models", params={"status": "queued"}).json()["total"] == 0
    by_r2 = api.get("/models", params={"sort": "r2", "order": "asc"}).json()["models"]
    assert [m["id"] for m in by_r2] == sorted(ids.values())
    for bad in ({"status": "done"}, {"sort": "r2; drop table"}, {"order": "up"}, {"limit": "0"}):
        assert api.get("/models", params=bad).status_code == 422


def test_healthz_and_openapi(api):
    assert api.get("/healthz").json() == {"status": "ok", "database": "ok"}
    schema = api.get("/openapi.json").json()
    request = schema["paths"]["/train"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["symbol"] and "hyperparameters" in request["properties"]


def test_database_unreachable_is_503_not_500(start_api):
    with httpx.Client(base_url=start_api("postgresql://postgres@127.0.0.1:1/nowhere"), timeout=30) as client:
        for response in (
            client.get("/healthz"),
            client.post("/train", json={"symbol": "AAPL"}),
            client.get("/models"),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "database unavailable"


async def test_fifty_concurrent_posts_all_2xx_and_each_model_trained_once(clean, start_api, start_worker):
    """The old service's load test: 50 concurrent POST /train (25 distinct specs, each sent twice)."""
    url = start_api()
    start_worker(1)
    start_worker(2)
    bodies = [
        {"symbol": s, "algorithm": "LinearRegression", "train_window": 200 + i, "test_window": 50}
        for i in range(7)
        for s in ("AAPL", "MSFT", "IBM", "GOOG")
    ][:25] * 2
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/train", json=body) for body in bodies))
    assert all(r.status_code in (200, 201) for r in responses), [
        r.text for r in responses if r.status_code >= 300
    ]
    assert sum(r.status_code == 201 for r in responses) == 25
    model_ids = sorted({r.json()["model_id"] for r in responses})
    assert len(model_ids) == 25

    from tests.conftest import wait_for_jobs, wait_for_models

    finished = wait_for_models(clean, model_ids, timeout=180)
    assert {m["status"] for m in finished.values()} == {"completed"}
    assert {m["attempts"] for m in finished.values()} == {1}
    jobs = wait_for_jobs(clean)  # one job per model, each succeeded once
    assert sorted(jobs) == model_ids and set(jobs.values()) == {"succeeded"}
    assert (
        clean.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'train_model'").fetchone()[0]
        == 25
    )


async def _gathered(database: str, requests: list[dict]) -> list:
    """Each request's answer (its Submission, or the error it raised) from one Gathering, all at once."""
    pool = gateway.open_pool(database, 4, "sfq-test")
    await pool.open()
    try:
        gathering = Gathering(pool, "http")
        return await asyncio.gather(*(gathering.submit(r) for r in requests), return_exceptions=True)
    finally:
        await pool.close()


async def test_concurrent_submissions_are_enqueued_in_one_statement_each_with_its_own_answer(clean, database):
    """Requests that arrive together go into one statement (one transaction: one receipt time), in their
    order, each answered with its own model; the same spec twice is one model."""
    requests = [{"symbol": "AAPL", **FAST, "train_window": 300 + i} for i in range(8)]
    answers = await _gathered(database, [*requests, requests[3]])
    assert [a.deduplicated for a in answers] == [False] * 8 + [True]
    assert answers[8].model_id == answers[3].model_id and len({a.model_id for a in answers}) == 8
    assert [a.request_id for a in answers] == sorted(a.request_id for a in answers)
    rows = clean.execute(
        "SELECT count(*), count(DISTINCT received_at), min(via) FROM training_requests WHERE id = ANY(%s)",
        ([a.request_id for a in answers],),
    ).fetchone()
    assert rows == (9, 1, "http")
    windows = clean.execute(
        "SELECT train_window FROM models WHERE id = ANY(%s) ORDER BY id", ([a.model_id for a in answers],)
    )
    assert [w for (w,) in windows] == [300 + i for i in range(8)]


async def test_a_bad_request_among_gathered_ones_gets_its_own_refusal_and_the_others_are_enqueued(
    clean, database
):
    """One bad request refuses its gathered statement; then each is submitted alone: the bad one is refused
    naming its field and stores nothing, the others are enqueued as if they had come alone."""
    good = [{"symbol": "MSFT", **FAST, "train_window": 400 + i} for i in range(4)]
    answers = await _gathered(
        database, [good[0], good[1], {"symbol": "MSFT", "horizon": 0}, good[2], good[3]]
    )
    refused = answers[2]
    assert isinstance(refused, Rejected) and refused.field == "horizon", refused
    enqueued = [a for i, a in enumerate(answers) if i != 2]
    assert [a.deduplicated for a in enqueued] == [False] * 4
    assert clean.execute("SELECT count(*) FROM training_requests").fetchone()[0] == 4
    assert clean.execute("SELECT count(*) FROM models WHERE horizon = 0").fetchone()[0] == 0
