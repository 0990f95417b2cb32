"""The web dashboard under /ui (docs/dashboard.md): server-rendered pages of the API's own app, not in
its OpenAPI schema. With API tokens configured its forms are shown disabled: the token middleware
(queue_app.auth) refuses a POST without the Authorization header, which a browser form cannot send."""

from __future__ import annotations

from functools import partial

from starlette.routing import Mount, Route

from queue_app.config import Settings
from queue_app.ui import actions, pages


def routes(settings: Settings) -> list[Mount]:
    locked = bool(settings.api_tokens)
    model = "/models/{model_id:id}"
    return [
        Mount(
            "/ui",
            routes=[
                Route("/", pages.overview, methods=["GET"]),
                Route("/models", pages.models, methods=["GET"]),
                Route(model, partial(pages.model, locked=locked), methods=["GET"]),
                Route(f"{model}/retrain", partial(actions.retrain, locked=locked), methods=["POST"]),
                Route(f"{model}/evolve", partial(actions.evolve, locked=locked), methods=["POST"]),
                Route(f"{model}/cancel", partial(actions.cancel, locked=locked), methods=["POST"]),
                Route("/sweeps/{sweep_id:id}", pages.sweep, methods=["GET"]),
                Route("/submit", partial(actions.submit_form, locked=locked), methods=["GET"]),
                Route("/submit", partial(actions.submit, locked=locked), methods=["POST"]),
            ],
        )
    ]
