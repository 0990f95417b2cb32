"""API tokens (docs/security.md). With SFQ_API_TOKENS or SFQ_API_TOKENS_FILE set, a request that changes
something needs `Authorization: Bearer <token>`, and so does a read when SFQ_API_OPEN_READS=false.
Without tokens the API stays open, as it always was (`sfq api` listens on 127.0.0.1 unless told otherwise).

A pure ASGI middleware: a refused request is answered before anything reads its body. A token written
`name:token` names who sent the request: `actor(request)` (recorded with an alias's move); an unnamed
token, or an open API, is "api".
"""

from __future__ import annotations

import hashlib
import hmac
import re

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from queue_app.config import Settings

CREDENTIALS = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750's b64token: anything else is malformed
READS = frozenset({"GET", "HEAD"})
OPEN_PATHS = frozenset({"/healthz"})  # load balancers and orchestrators probe it without credentials


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


ANONYMOUS = "api"


def actor(request: Request) -> str:
    """Who sent the request: its token's name; "api" for an unnamed token or an open API."""
    return request.scope.get("sfq_actor") or ANONYMOUS


class TokenAuth:
    def __init__(
        self, app: ASGIApp, tokens: tuple[str, ...], open_reads: bool, names: tuple[str | None, ...] = ()
    ):
        self.app = app
        self.digests = tuple(_digest(token) for token in tokens)
        self.names = names or (None,) * len(tokens)
        self.open_reads = open_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if self._open(scope):
            if self.digests and scheme.lower() == "bearer" and CREDENTIALS.fullmatch(token):
                scope["sfq_actor"] = self._name(token)  # an open read still says who sent it
            await self.app(scope, receive, send)
            return
        if scheme.lower() != "bearer" or not CREDENTIALS.fullmatch(token):
            refusal = JSONResponse(
                {"error": "authentication required", "detail": "send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not self._known(token):
            refusal = JSONResponse({"error": "invalid token", "detail": None}, status_code=403)
        else:
            scope["sfq_actor"] = self._name(token)
            await self.app(scope, receive, send)
            return
        await refusal(scope, receive, send)

    def _open(self, scope: Scope) -> bool:
        return (
            not self.digests or scope["path"] in OPEN_PATHS or (self.open_reads and scope["method"] in READS)
        )

    def _known(self, token: str) -> bool:
        """Compared with every configured token, each in constant time, with no early exit; SHA-256
        digests all have one length, so neither the time nor a length check says how close a guess was."""
        given = _digest(token)
        known = False
        for digest in self.digests:
            known |= hmac.compare_digest(given, digest)
        return known

    def _name(self, token: str) -> str | None:
        """The name of a known token (every digest compared, as `_known` does); None otherwise."""
        given, name = _digest(token), None
        for digest, named in zip(self.digests, self.names, strict=True):
            if hmac.compare_digest(given, digest):
                name = named
        return name


def middleware(settings: Settings) -> list[Middleware]:
    return [
        Middleware(
            TokenAuth,
            tokens=settings.api_tokens,
            open_reads=settings.api_open_reads,
            names=settings.api_token_names,
        )
    ]
