"""The API's HTTP server, `sfq api` (uvicorn with httptools and uvloop), as a real process: the access log
is opt-in, and a request's line and headers are bounded (httptools alone buffers them without limit)."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest

from queue_app.api.app import ROUTES
from queue_app.api.http import MAX_HEAD_BYTES
from queue_app.api.openapi import OPENAPI
from tests.conftest import Process, free_port


def _port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_access_log_only_with_the_flag(database):
    quiet, logged = free_port(), free_port()
    servers = {
        quiet: Process(["api", "--port", str(quiet)], {"POSTGRES_URL": database}),
        logged: Process(["api", "--port", str(logged), "--access-log"], {"POSTGRES_URL": database}),
    }
    try:
        for port, server in servers.items():
            server.wait_for_line(r"Uvicorn running on")
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        servers[logged].wait_for_line(r'"GET /healthz HTTP/1\.1" 200', timeout=10)
    finally:
        for server in servers.values():
            server.stop()
    assert "Finished server process" in servers[quiet].output
    assert "/healthz" not in servers[quiet].output, servers[quiet].output


def test_a_header_block_past_the_bound_is_refused_and_the_server_goes_on(start_api):
    base_url = start_api()
    port = _port(base_url)

    # Unfinished headers over the bound: 400 and the connection closed, without waiting for the rest.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert f"larger than {MAX_HEAD_BYTES} bytes".encode() in answer

    # An endless header: the server hangs up long before 32 MiB (httptools alone would take it all in).
    with (
        socket.create_connection(("127.0.0.1", port)) as sock,
        pytest.raises((ConnectionResetError, BrokenPipeError)),
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(32 * 16):
            sock.sendall(b"a" * 65536)

    # Headers just under the bound, sent in small pieces, are served; so is a body far over the bound.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
        head += b"a" * (MAX_HEAD_BYTES - len(head) - 1024) + b"\r\n\r\n"
        for start in range(0, len(head), 4096):
            sock.sendall(head[start : start + 4096])
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    body = json.dumps({"symbol": "AAPL", "padding": "a" * (4 * MAX_HEAD_BYTES)})
    response = httpx.post(f"{base_url}/train", content=body, timeout=30)
    assert response.status_code == 422 and response.json()["detail"] == {"field": "padding"}, response.text
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200


def test_openapi_documents_every_route_and_nothing_else():
    """The schema is written by hand beside the route table: every path and method routed is documented,
    and every documented one is routed (path convertors such as {model_id:id} read as {model_id})."""
    routed = {
        (re.sub(r"{(\w+):\w+}", r"{\1}", route.path), method.lower())
        for route in ROUTES
        for method in route.methods - {"HEAD"}  # Starlette adds HEAD to every GET
    }
    documented = {(path, method) for path, operations in OPENAPI["paths"].items() for method in operations}
    assert len(routed) == len(ROUTES) > 20
    assert routed - documented == set(), "routed but not in queue_app/api/openapi.py"
    assert documented - routed == set(), "in queue_app/api/openapi.py but not routed"
