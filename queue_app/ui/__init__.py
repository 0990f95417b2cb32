"""The web dashboard under /ui (docs/dashboard.md): server-rendered pages of the API's own app, not in
its OpenAPI schema. Pages: `overview`, `leaderboard`, `model`, `sweep`, `study`; `actions` (its forms' posts),
`forms`, `html` (layout and escaping), `charts` (matplotlib SVG). It uses the core (queue_app.gateway,
params, lineage, sweeps, monitor), never the API's modules. With API tokens configured its forms are
shown disabled: the token middleware (queue_app.api.auth) refuses a POST without the Authorization
header, which a browser form cannot send. The page `compare` sets 2 to 6 models side by side; `strategies`
shows the strategy aliases' live records against their backtests, with the decay flag."""

from __future__ import annotations

from functools import partial

from starlette.routing import Mount, Route

from queue_app.config import Settings
from queue_app.ui import actions, compare, leaderboard, model, overview, strategies, study, sweep


def routes(settings: Settings) -> list[Mount]:
    locked = bool(settings.api_tokens)
    one = "/models/{model_id:id}"
    return [
        Mount(
            "/ui",
            routes=[
                Route("/", overview.overview, methods=["GET"]),
                Route("/models", leaderboard.models, methods=["GET"]),
                Route(one, partial(model.model, locked=locked), methods=["GET"]),
                Route(f"{one}/retrain", partial(actions.retrain, locked=locked), methods=["POST"]),
                Route(f"{one}/evolve", partial(actions.evolve, locked=locked), methods=["POST"]),
                Route(f"{one}/cancel", partial(actions.cancel, locked=locked), methods=["POST"]),
                Route("/sweeps/{sweep_id:id}", sweep.sweep, methods=["GET"]),
                Route("/studies/{study_id:id}", study.study, methods=["GET"]),
                Route("/compare", compare.compare, methods=["GET"]),
                Route("/strategies", strategies.strategies, methods=["GET"]),
                Route("/strategies/{name}", strategies.strategy, methods=["GET"]),
                Route("/submit", partial(actions.submit_form, locked=locked), methods=["GET"]),
                Route("/submit", partial(actions.submit, locked=locked), methods=["POST"]),
            ],
        )
    ]
