"""`sfq submit | batch | retrain | evolve | cancel | watch | models | model | lineage | features |
predictions | artifact | predict`: models in, and everything about them out."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg

from queue_app import artifact_store, gateway, lineage, params, tracing
from queue_app.cli import progress, render
from queue_app.cli.common import (
    connect,
    model_id,
    request_from,
    run,
    spec_options,
    until_answered,
    wait_for,
    wait_options,
)
from queue_app.errors import ArtifactError, Conflict, NotFound
from queue_app.gateway import Call, Submission
from queue_app.vocabulary import FINISHED, STATUSES, TRAINING_QUEUE

Submitted = Submission | list[Submission]


def _enqueue(args: argparse.Namespace, submit: Callable[[psycopg.Connection], Submitted]) -> int:
    """Submit, print each model the submission answers with, and with --wait follow them to the end."""
    with connect(args) as conn:
        answer = submit(conn)
        submissions = answer if isinstance(answer, list) else [answer]
        for s in submissions:
            note = " (deduplicated: an identical model exists)" if s.deduplicated else ""
            target = f" {s.target_col:<5}" if isinstance(answer, list) else ""
            print(f"model {s.model_id}{target} fingerprint {s.fingerprint}{note}")
        if not args.wait:
            return 0
        finished = wait_for(conn, [s.model_id for s in submissions], args.timeout)
    for model in finished.values():
        print(f"model {model['id']} {model['status']}" + (f": {model['error']}" if model["error"] else ""))
        if model["status"] == "completed":
            print(json.dumps({k: model["metrics"][k] for k in ("rmse", "r2", "directional_accuracy", "ic")}))
    return 0 if all(model["status"] == "completed" for model in finished.values()) else 1


def _calling(call: Call[Submitted]) -> Callable[[psycopg.Connection], Submitted]:
    return lambda conn: gateway.run(conn, call)


def _sending(
    submit: Callable[[Mapping[str, Any], str], Call[Submitted]], request: dict[str, Any]
) -> Callable[[psycopg.Connection], Submitted]:
    """A request submitted as the API submits one: in a producer span when tracing is on, a child of
    the TRACEPARENT variable (OpenTelemetry's environment carrier), its context stored with the request."""

    def send(conn: psycopg.Connection) -> Submitted:
        tracing.configure("sfq-cli")
        carrier = {"traceparent": os.environ["TRACEPARENT"]} if os.environ.get("TRACEPARENT") else None
        with tracing.sending(TRAINING_QUEUE, request, carrier) as sending:
            answer = gateway.run(conn, submit(sending.request, "cli"))
            if sending.recording:
                sending.sent(answer, gateway.run(conn, gateway.model_jobs(sending.new_models(answer))))
        return answer

    return send


def cmd_submit(args: argparse.Namespace) -> int:
    return _enqueue(args, _sending(gateway.submit, request_from(args)))


def cmd_batch(args: argparse.Namespace) -> int:
    return _enqueue(args, _sending(gateway.submit_batch, request_from(args)))


def cmd_retrain(args: argparse.Namespace) -> int:
    return _enqueue(args, _calling(gateway.retrain(args.model_id, args.force, "cli")))


def cmd_evolve(args: argparse.Namespace) -> int:
    overrides = request_from(args)
    for field in args.reset or []:
        overrides[field] = None  # back to the default
    return _enqueue(args, _calling(gateway.evolve(args.parent, overrides, "cli")))


def cmd_cancel(args: argparse.Namespace) -> None:
    row = run(args, gateway.cancel_model(args.model_id))
    print(f"model {row['id']} {row['status']}")


def _status(args: argparse.Namespace) -> str:
    status = run(args, gateway.model_status(args.model_id))
    if status is None:
        raise NotFound(f"no model with id {args.model_id}")
    return status


def cmd_lineage(args: argparse.Namespace) -> None:
    rows = run(args, gateway.lineage(args.model_id))
    if not rows:
        raise NotFound(f"no model with id {args.model_id}")
    chain = lineage.build(args.model_id, rows)
    print(json.dumps(chain, indent=2, default=str) if args.json else lineage.render(chain))


def cmd_features(args: argparse.Namespace) -> None:
    status = _status(args)
    rows = run(args, gateway.model_features(args.model_id))
    if not rows:
        print(f"model {args.model_id} is {status}: no feature importances yet")
    for row in rows:
        print(f"{row['rank']:>3}  {row['feature']:<24} {row['importance']:.6f}  ({row['method']})")


def cmd_predictions(args: argparse.Namespace) -> None:
    status = _status(args)
    rows = run(args, gateway.model_predictions(args.model_id))
    if not rows:
        print(f"model {args.model_id} is {status}: no predictions yet", file=sys.stderr)
        return
    print("ts,predicted,actual")
    for row in rows:
        print(f"{row['ts'].isoformat()},{row['predicted']!r},{row['actual']!r}")


def cmd_artifact(args: argparse.Namespace) -> None:
    status = _status(args)
    artifact = run(args, gateway.model_artifact(args.model_id))
    if artifact is None:
        raise Conflict(
            f"model {args.model_id} is {status}: it has no model file (only a completed model has one)"
        )
    artifact_store.present(artifact)
    output = Path(args.output or f"model-{args.model_id}.{artifact['format']}")
    try:
        with connect(args) as conn, output.open("wb") as out:  # a chunk at a time, checked as it goes
            artifact_store.write_to(conn, artifact, out)
    except ArtifactError:
        output.unlink()
        raise
    print(f"{output}: {artifact['size']} bytes, sha256 {artifact['sha256']}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Like POST /models/{id}/predict: a worker loads the stored model and predicts from the latest bar."""
    queued = run(args, gateway.request_forecast(args.model_id))
    forecast = until_answered(args, queued, gateway.get_forecast, "forecast")
    print(json.dumps(forecast, indent=2, default=str))


def cmd_models(args: argparse.Namespace) -> None:
    given = {"sort": args.sort, "order": args.order, "limit": str(args.limit), "status": args.status}
    query = params.ModelQuery.parse({key: value for key, value in given.items() if value is not None})
    with connect(args) as conn:
        print(render.leaderboard(gateway.leaderboard(conn, query)))


def cmd_model(args: argparse.Namespace) -> None:
    model = run(args, gateway.get_model(args.model_id))
    if model is None:
        raise NotFound(f"no model with id {args.model_id}")
    print(json.dumps(model, indent=2, default=str))


def cmd_watch(args: argparse.Namespace) -> None:
    """Live progress of the given models, or of every queued and running one, until they are done."""
    view = progress.View()
    with connect(args) as conn:
        watched = list(args.model_ids)
        while True:
            if not args.model_ids:  # everything unfinished now, and what was watched before
                watched = sorted(set(watched) | set(gateway.run(conn, gateway.unfinished_models())))
            if not watched:
                print("nothing queued or running")
                return
            rows = gateway.run(conn, gateway.models_progress(watched))
            view.show(rows)
            if all(row["status"] in FINISHED for row in rows):
                return
            time.sleep(args.interval)


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="submit a training request")
    spec_options(submit, required=("symbol",))
    wait_options(submit)
    submit.set_defaults(func=cmd_submit)

    batch = sub.add_parser("batch", help="one spec, four models: one per target (open, close, high, low)")
    spec_options(batch, required=("symbol",), skip=("target_col",))
    wait_options(batch)
    batch.set_defaults(func=cmd_batch)

    retrain = sub.add_parser("retrain", help="train a model's spec again on the bars there are now")
    retrain.add_argument("model_id", type=model_id)
    retrain.add_argument("--force", action="store_true", help="a fresh run even without new bars")
    wait_options(retrain)
    retrain.set_defaults(func=cmd_retrain)

    evolve = sub.add_parser("evolve", help="a child model: the parent's spec with the options given changed")
    evolve.add_argument("parent", type=model_id, metavar="PARENT_MODEL_ID")
    spec_options(evolve, skip=("parent_model_id", "retrain_of", "run"))
    evolve.add_argument("--reset", action="append", metavar="FIELD", help="set FIELD back to its default")
    wait_options(evolve)
    evolve.set_defaults(func=cmd_evolve)

    watch = sub.add_parser("watch", help="live progress bars of models (default: all queued and running)")
    watch.add_argument("model_ids", nargs="*", type=model_id)
    watch.add_argument("--interval", type=float, default=0.5)
    watch.set_defaults(func=cmd_watch)

    cancel = sub.add_parser("cancel", help="cancel a queued or running model")
    cancel.add_argument("model_id", type=model_id)
    cancel.set_defaults(func=cmd_cancel)

    chain = sub.add_parser("lineage", help="a model's ancestors and descendants, with what changed")
    chain.add_argument("model_id", type=model_id)
    chain.add_argument("--json", action="store_true")
    chain.set_defaults(func=cmd_lineage)

    for name, func, what in (
        ("features", cmd_features, "a model's feature importances, ranked"),
        ("predictions", cmd_predictions, "a model's held-out predictions next to the actual values (CSV)"),
        ("predict", cmd_predict, "predict from the latest bar with a trained model (run by a worker)"),
        ("artifact", cmd_artifact, "save a model's file (skops) and print its SHA-256"),
        ("model", cmd_model, "show one model"),
    ):
        command = sub.add_parser(name, help=what)
        command.add_argument("model_id", type=model_id)
        command.set_defaults(func=func)
        if name == "artifact":
            command.add_argument("-o", "--output", help="file to write (default model-ID.skops)")
        if name == "predict":
            command.add_argument("--timeout", type=float, default=60)

    models = sub.add_parser("models", help="list models (a leaderboard with --sort METRIC)")
    models.add_argument(
        "--sort", default="id", help="id or a metric, e.g. directional_accuracy, ic, r2, rmse"
    )
    models.add_argument("--order", choices=["asc", "desc"], default="desc")
    models.add_argument("--status", choices=STATUSES)
    models.add_argument("--limit", type=int, default=20)
    models.set_defaults(func=cmd_models)
