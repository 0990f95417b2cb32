"""HTTP plumbing of the API: the server protocol with a bound on request heads, JSON answers, and reading
a request's body and fields. A bad body or field raises sfq's errors (queue_app.errors); the API's handler
table (queue_app.api.app) turns them into answers."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from queue_app.errors import Malformed, Rejected, TooLarge

MAX_BODY_BYTES = 1 << 20  # a training request is a few hundred bytes; a larger body is refused with 413
MAX_HEAD_BYTES = 64 << 10  # request line and headers still unfinished past it: 400, closed (HttpProtocol)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on a request's line and headers: httptools buffers them
    without one (h11 stopped at 16 KiB), so a client sending an endless header would grow the API's memory
    until it is killed. The reads after which the headers are still unfinished are counted; past
    MAX_HEAD_BYTES, 400 and the connection closed. A read that also holds the end of the previous request
    counts whole, so the bound is approximate, never below MAX_HEAD_BYTES.
    """

    head_bytes = 0
    in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes, self.in_head = 0, True

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.in_head or self.transport.is_closing():
            return
        self.head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES:
            message = f"Request line and headers larger than {MAX_HEAD_BYTES} bytes."
            self.logger.warning(message)
            self.send_400_response(message)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, separators=(",", ":")).encode()


def error(status: int, message: str, detail: Any = None) -> JSON:
    return JSON({"error": message, "detail": detail}, status_code=status)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def json_body(request: Request, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object: 413 over MAX_BODY_BYTES (declared or as sent), 400 when not JSON,
    422 when not an object. An optional body may be empty (then it is {})."""
    too_large = TooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes", MAX_BODY_BYTES)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count what arrives
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    # JSONDecodeError is a ValueError; RecursionError is a body nested deeper than Python's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Malformed("request body is not valid JSON", str(exc)) from None
    if not isinstance(body, dict):
        raise Rejected("request body must be a JSON object")
    return body


def only(body: dict[str, Any], *fields: str) -> None:
    """Refuse (naming it) the first field of the body that is not one of `fields`."""
    unknown = sorted(body.keys() - set(fields))
    if unknown:
        raise Rejected(f"unknown field {unknown[0]!r}; expected {', '.join(fields)}", unknown[0])


def model_id(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise Rejected(f"{field} must be a model id, got {value!r}", field)
    return value


def priority(body: dict[str, Any], default: int) -> int:
    value = body.get("priority", default)
    if not isinstance(value, int) or isinstance(value, bool) or not -100 <= value <= 100:
        raise Rejected(f"priority must be an integer between -100 and 100, got {value!r}", "priority")
    return value


def boolean(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise Rejected(f"{field} must be true or false, got {value!r}", field)
    return value


def holdable(value: Any, field: str) -> Any:
    """A JSON value the database can hold as jsonb (which, like text, has no NUL character, in keys or
    strings), or a 422 naming the field."""
    if isinstance(value, str):
        text(value, field, "a string")
    elif isinstance(value, dict):
        for key, item in value.items():
            text(key, field, "an object whose keys are strings")
            holdable(item, f"{field}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            holdable(item, f"{field}[{index}]")
    return value


def text(value: Any, field: str, what: str) -> str:
    """A string the database can hold as text (PostgreSQL's text has no NUL character), or a 422 naming
    the field; `what` says what it should be."""
    if not isinstance(value, str) or "\x00" in value:
        raise Rejected(f"{field} must be {what} without a NUL character, got {value!r}", field)
    return value
