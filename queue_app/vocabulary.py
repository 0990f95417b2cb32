"""Words the database, the core and the front ends share: model statuses, queues and tasks, a training's
phases.

The model statuses are the database's `sfq_model_status` enum (tests/test_contract.py keeps the two
equal); the queue and task names are what the database defers (sql/schema) and the workers run.
The spec's own vocabulary (targets, transforms, CV strategies, timeframes, the window rule) comes from
the workers' registries and reaches the database through the generated sql/registry.sql.
"""

from __future__ import annotations

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
UNFINISHED = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled")

# The metrics a training stores (workers/modelling/training.py: score, the naive forecast's rmse, the CV
# folds' means) and the leaderboard sorts on:
# each has an index on its value (sql/schema/tables.sql models_metric_<name>; tests/test_reads.py checks).
SORTABLE_METRICS = (
    "directional_accuracy",
    "directional_base_rate",
    "ic",
    "mae",
    "n",
    "r2",
    "rmse",
    "naive_rmse",
    "cv_directional_accuracy_mean",
    "cv_ic_mean",
    "cv_r2_mean",
    "cv_rmse_mean",
)

# A symbol's trading calendar (symbol_calendars' CHECK; workers/modelling/backtest.py CALENDARS says what
# each one means; tests/test_contract.py keeps the three equal).
CALENDARS = ("equity", "24x7")

TRAINING_QUEUE, TRAIN_TASK = "training", "train_model"
PREDICTION_QUEUE, PREDICT_TASK = "prediction", "predict_model"
SIMULATION_QUEUE, SIMULATE_TASK = "simulation", "simulate_model"
STUDY_QUEUE, ADVANCE_TASK = "study", "advance_study"
# A training's phases in order, each timed from the end of the one before (workers/modelling/training.py
# TrainingResult.timings): what a traced training's spans and the per-job cost benchmark break it into.
TRAINING_PHASES = ("features", "cv", "fit", "evaluate", "importance", "serialize")
# A study's trial (study_trials' CHECK): asked and training, or how it ended; `reused` took the result of a
# live model with the same fingerprint instead of training again.
TRIAL_STATES = ("running", "complete", "pruned", "failed", "reused")
