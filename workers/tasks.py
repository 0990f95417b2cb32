"""Procrastinate tasks. The database defers them (see the training_requests trigger); the worker daemon
runs them with its `Runtime` in the job context."""

from __future__ import annotations

from procrastinate import JobContext

from queue_app.app import TRAIN_TASK, TRAINING_QUEUE, app


@app.task(name=TRAIN_TASK, queue=TRAINING_QUEUE, pass_context=True)
async def train_model(context: JobContext, model_id: int) -> None:
    await context.additional_context["runtime"].train(model_id, job_id=context.job.id)
