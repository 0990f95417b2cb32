"""Celery with Redis as the broker, calling the same job function as the other baselines (results go
to PostgreSQL, so no result backend). `celery -A bench.celery_app worker --pool prefork -c N`."""

from __future__ import annotations

import os

from celery import Celery

from bench.jobs import run_job

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "sfq-bench")
celery = Celery("sfq_bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
celery.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,  # one job at a time per child, as sfq's workers take them
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@celery.task(name="bench.train")
def train_task(url: str, model_id: int) -> None:
    run_job(url, model_id)
