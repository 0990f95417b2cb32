"""sfq's execution side, in two packages: `workers.daemon`, the worker daemon and everything that touches
the database or other processes (jobs, the training process, loading bars, forecasts and backtests run),
and `workers.modelling`, the pure computation it runs (features, training, backtests, model files, the
registries exported to the database), which never touches the database. The core (`queue_app`) never
imports either; `sfq worker` reaches the daemon through the `sfq.commands` entry point."""
