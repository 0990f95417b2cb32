"""The Procrastinate app. Its tasks live in `workers.tasks`; jobs are deferred by the database itself
(the training_requests trigger), so the API and CLI never defer through Python.
"""

from __future__ import annotations

import procrastinate

TRAINING_QUEUE = "training"
TRAIN_TASK = "train_model"  # the name sql/migrations/0001_foundation.sql defers

app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["workers.tasks"])


def connector(url: str) -> procrastinate.PsycopgConnector:
    return procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=3)
