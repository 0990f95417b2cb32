"""The web process `sfq api` runs: the HTTP API (queue_app.api) and the dashboard under /ui
(queue_app.ui) in one Starlette app, sharing one database pool and the API's tokens. This module only
assembles them; neither front end imports the other."""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette

from queue_app import gateway, tracing, ui
from queue_app.api.app import ERROR_HANDLERS, ROUTES
from queue_app.api.auth import middleware as token_middleware
from queue_app.api.gathering import Gathering
from queue_app.config import Settings, database_url


def create_app(url: str | None = None, settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    url = url or database_url(settings)
    tracing.configure("sfq-api")  # only when the OTEL_* variables ask for traces

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        pool = gateway.open_pool(url, settings.pool_size, "sfq-api", settings.connection_options)
        await pool.open(wait=False)
        app.state.pool = pool
        app.state.gathering = Gathering(pool, "http")  # POST /train's concurrent requests, one statement
        app.state.rescue_after_s = settings.rescue_after_s
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[*ROUTES, *ui.routes(settings)],  # the dashboard (docs/dashboard.md): not in /openapi.json
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
        middleware=token_middleware(settings),  # API tokens (docs/security.md)
    )
