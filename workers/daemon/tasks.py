"""Procrastinate tasks. The database defers them (sql/schema), by the queue and task names of
queue_app.vocabulary; the worker daemon runs them with its `Runtime` in the job context."""

from __future__ import annotations

from procrastinate import JobContext, RetryStrategy
from procrastinate.retry import RetryDecision

from queue_app.vocabulary import (
    ADVANCE_TASK,
    PREDICT_TASK,
    PREDICTION_QUEUE,
    SIMULATE_TASK,
    SIMULATION_QUEUE,
    STUDY_QUEUE,
    TRAIN_TASK,
    TRAINING_QUEUE,
)
from workers.daemon.app import app
from workers.daemon.runtime import ModelFailed, Requeue

TRIES = 8  # a job put back (shutdown, database away) runs again, this many times


class RequeueStrategy(RetryStrategy):
    """Exponential backoff (2, 4, 8, ... s) while the database is away; none after a shutdown, where the
    job is due at once for the next worker (which would otherwise sleep until its next poll)."""

    def get_retry_decision(self, *, exception: BaseException, job) -> RetryDecision | None:
        decision = super().get_retry_decision(exception=exception, job=job)
        if decision is not None and isinstance(exception, Requeue) and exception.at_once:
            return RetryDecision(retry_in={"seconds": 0})
        return decision


@app.task(
    name=TRAIN_TASK,
    queue=TRAINING_QUEUE,
    pass_context=True,
    retry=RequeueStrategy(max_attempts=TRIES - 1, exponential_wait=2, retry_exceptions={Requeue}),
)
async def train_model(context: JobContext, model_id: int) -> None:
    runtime = context.additional_context["runtime"]
    try:
        await runtime.train(model_id, job_id=context.job.id)
    except Requeue as requeue:
        if context.job.attempts + 1 >= TRIES:
            reason = f"gave up after {TRIES} tries: {requeue}"
            await runtime.give_up(model_id, context.job.id, reason)
            raise ModelFailed(reason) from None
        raise


@app.task(name=PREDICT_TASK, queue=PREDICTION_QUEUE, pass_context=True)
async def predict_model(context: JobContext, forecast_id: int) -> None:
    await context.additional_context["runtime"].forecast(forecast_id)


@app.task(name=SIMULATE_TASK, queue=SIMULATION_QUEUE, pass_context=True)
async def backtest_model(context: JobContext, simulation_id: int) -> None:
    """A backtest; its task's name and argument are the database's (it defers them: sql/schema)."""
    await context.additional_context["runtime"].backtest(simulation_id)


@app.task(
    name=ADVANCE_TASK,
    queue=STUDY_QUEUE,
    pass_context=True,
    retry=RetryStrategy(max_attempts=TRIES - 1, exponential_wait=2),
)
async def advance_study(context: JobContext, study_id: int) -> None:
    """A study's trials told and asked (workers/daemon/studies.py); deferred by the database when a study
    is created and whenever one of its trials ends. Retried: a study must not stall on a passing error;
    one that fails every try ends the study `failed`, saying why, rather than leaving it waiting."""
    runtime = context.additional_context["runtime"]
    try:
        await runtime.advance_study(study_id)
    except Exception as error:
        if context.job.attempts + 1 >= TRIES:
            await runtime.give_up_study(
                study_id, f"its advance failed {TRIES} times: {type(error).__name__}: {error}"
            )
        raise
