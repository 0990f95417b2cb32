"""API tokens (queue_app/auth.py, docs/security.md) against a real `sfq api` process: open without
tokens; with tokens, changes need a valid bearer token (401 without or malformed, 403 wrong), reads too
when SFQ_API_OPEN_READS=false, /healthz always open, and a refused request leaves nothing behind."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Process, free_port, run_sfq

TOKEN = secrets.token_urlsafe(32)
SECOND = secrets.token_hex(24)
FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60}
NO_TOKENS = {"SFQ_API_TOKENS": "", "SFQ_API_TOKENS_FILE": "", "SFQ_API_OPEN_READS": ""}


@pytest.fixture
def start_api_with(database) -> Iterator:
    """Like conftest's start_api, with environment for the API process; yields start(**env) ->
    (client, process). Token variables not given are unset, whatever the test run's environment."""
    started: list[tuple[httpx.Client, Process]] = []

    def start(**env: str) -> tuple[httpx.Client, Process]:
        port = free_port()
        api = Process(["api", "--port", str(port)], {**NO_TOKENS, "POSTGRES_URL": database, **env})
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        started.append((client, api))
        api.wait_for_line(r"Uvicorn running on")
        return client, api

    yield start
    for client, api in started:
        client.close()
        api.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique_request() -> dict:
    """A request no other test makes: a new model whenever it is accepted."""
    return {**FAST, "hyperparameters": {"alpha": round(1 + secrets.randbelow(10**9) / 10**6, 6)}}


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        assert "www-authenticate" not in response.headers
    if response.request.method != "HEAD":  # a HEAD answer has no body
        error = "authentication required" if status == 401 else "invalid token"
        assert response.json()["error"] == error and set(response.json()) == {"error", "detail"}


def test_without_tokens_everything_is_open(clean, start_api_with):
    client, _ = start_api_with()
    created = client.post("/train", json=unique_request())
    assert created.status_code == 201, created.text
    assert client.get(f"/models/{created.json()['model_id']}").status_code == 200
    assert client.post(f"/models/{created.json()['model_id']}/cancel").status_code == 200


def test_changes_need_a_valid_token_reads_stay_open(clean, start_api_with):
    client, api = start_api_with(SFQ_API_TOKENS=f" {SECOND} , {TOKEN} ")
    assert_refused(client.post("/train", json=unique_request()), 401)
    for malformed in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer !!", f"Bearer {TOKEN} extra", f"Token {TOKEN}"):
        assert_refused(
            client.post("/train", json=unique_request(), headers={"Authorization": malformed}), 401
        )
    assert_refused(client.post("/train", json=unique_request(), headers=bearer("wrong")), 403)
    assert_refused(client.post("/train", json=unique_request(), headers=bearer(TOKEN[:-1])), 403)
    assert_refused(client.post("/train", json=unique_request(), headers=bearer(TOKEN + "A")), 403)

    created = client.post("/train", json=unique_request(), headers=bearer(TOKEN))
    assert created.status_code == 201, created.text
    model_id = created.json()["model_id"]
    also = client.post("/train", json=unique_request(), headers={"Authorization": f"bearer {SECOND}"})
    assert also.status_code == 201, also.text  # every configured token; the scheme in any case

    # Every method but GET and HEAD changes something: the other endpoints are guarded the same way.
    assert_refused(client.post(f"/models/{model_id}/cancel"), 401)
    assert_refused(client.post(f"/retrain/{model_id}", headers=bearer("x" * 40)), 403)
    assert_refused(client.delete(f"/models/{model_id}"), 401)
    assert_refused(client.options("/train"), 401)
    assert client.post(f"/models/{model_id}/cancel", headers=bearer(TOKEN)).status_code == 200

    # Reads are open by default, and /openapi.json is a read.
    assert client.get(f"/models/{model_id}").json()["status"] == "cancelled"
    assert client.head(f"/models/{model_id}").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    api.stop()
    assert TOKEN not in api.output and SECOND not in api.output  # never logged


def test_a_refused_request_is_never_read_into_the_database(clean, start_api_with):
    client, _ = start_api_with(SFQ_API_TOKENS=TOKEN)
    before = clean.execute(
        "SELECT (SELECT count(*) FROM training_requests), (SELECT count(*) FROM models),"
        " (SELECT count(*) FROM sweeps), (SELECT count(*) FROM procrastinate_jobs)"
    ).fetchone()
    request = unique_request()
    sweep = {"base": FAST, "grid": {"horizon": [1, 2]}}
    for headers in ({}, bearer("not-the-token-at-all")):
        assert client.post("/train", json=request, headers=headers).status_code in (401, 403)
        assert client.post(
            "/train/batch", json={**request, "symbol": "MSFT"}, headers=headers
        ).status_code in (
            401,
            403,
        )
        assert client.post("/sweeps", json=sweep, headers=headers).status_code in (401, 403)
    after = clean.execute(
        "SELECT (SELECT count(*) FROM training_requests), (SELECT count(*) FROM models),"
        " (SELECT count(*) FROM sweeps), (SELECT count(*) FROM procrastinate_jobs)"
    ).fetchone()
    assert after == before
    alpha = request["hyperparameters"]["alpha"]
    assert clean.execute(
        "SELECT count(*) FROM models WHERE (hyperparameters->>'alpha')::float8 = %s", (alpha,)
    ).fetchone() == (0,)
    # The same body with the token is accepted: it was refused for the token alone.
    assert client.post("/train", json=request, headers=bearer(TOKEN)).status_code == 201


def test_closed_reads_need_a_token_too_except_healthz(clean, start_api_with):
    client, _ = start_api_with(SFQ_API_TOKENS=TOKEN, SFQ_API_OPEN_READS="false")
    model_id = client.post("/train", json=unique_request(), headers=bearer(TOKEN)).json()["model_id"]
    for path in (f"/models/{model_id}", "/models", "/openapi.json", "/models/999999"):
        assert_refused(client.get(path), 401)
        assert_refused(client.get(path, headers=bearer("wrong")), 403)
    assert_refused(client.head(f"/models/{model_id}"), 401)
    assert client.get(f"/models/{model_id}", headers=bearer(TOKEN)).json()["id"] == model_id
    assert client.get("/openapi.json", headers=bearer(TOKEN)).status_code == 200
    assert client.get("/models/999999", headers=bearer(TOKEN)).status_code == 404
    # Load balancers probe /healthz without credentials.
    assert client.get("/healthz").status_code == 200
    assert client.head("/healthz").status_code == 200


def test_tokens_file_with_comments(clean, start_api_with, tmp_path):
    commented = secrets.token_urlsafe(32)
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"# sfq API tokens, one per line\n\n{TOKEN}\n   # {commented} (revoked)\n#{commented}\n  {SECOND}  \n"
    )
    client, _ = start_api_with(SFQ_API_TOKENS_FILE=str(tokens))
    assert client.post("/train", json=unique_request(), headers=bearer(TOKEN)).status_code == 201
    assert client.post("/train", json=unique_request(), headers=bearer(SECOND)).status_code == 201
    assert_refused(client.post("/train", json=unique_request(), headers=bearer(commented)), 403)
    assert_refused(client.post("/train", json=unique_request()), 401)
    assert client.get("/models").status_code == 200


def test_tokens_from_both_variables(clean, start_api_with, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{SECOND}\n")
    client, _ = start_api_with(SFQ_API_TOKENS=TOKEN, SFQ_API_TOKENS_FILE=str(tokens))
    for token in (TOKEN, SECOND):
        assert client.post("/train", json=unique_request(), headers=bearer(token)).status_code == 201


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SFQ_API_TOKENS": "tooshort"}, "SFQ_API_TOKENS item 1: a token is at least 16"),
        ({"SFQ_API_TOKENS": f"{TOKEN},has spaces in it!"}, "SFQ_API_TOKENS item 2: a token is at least 16"),
        ({"SFQ_API_TOKENS": " , "}, "SFQ_API_TOKENS is set but holds no token"),
        ({"SFQ_API_TOKENS_FILE": "/nonexistent/sfq-tokens"}, "cannot read SFQ_API_TOKENS_FILE"),
        ({"SFQ_API_TOKENS_FILE": "COMMENTS_ONLY"}, "holds no token"),
        ({"SFQ_API_OPEN_READS": "perhaps"}, "SFQ_API_OPEN_READS must be true or false"),
    ],
)
def test_a_bad_token_configuration_stops_the_api(database, monkeypatch, tmp_path, env, message):
    """A configuration that would leave the API open, or is not what it seems, is refused at start."""
    comments_only = tmp_path / "tokens"
    comments_only.write_text(f"# {TOKEN}\n\n")
    for name, value in {**NO_TOKENS, **env}.items():
        monkeypatch.setenv(name, str(comments_only) if value == "COMMENTS_ONLY" else value)
    result = run_sfq("api", "--port", str(free_port()), url=database, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr
    assert TOKEN not in result.stderr and "tooshort" not in result.stderr
