"""The worker daemon (`sfq worker N`, `sfq workers`): the side that touches the database and processes.

Procrastinate's app and tasks, the daemon's runtime (claiming a model, recording how its attempt ended,
the rescue loop), the training process it forks, the supervisor, systemd notifications, logs, and the
runners of forecasts and backtests. Every query goes through `queue_app.gateway`; the computation itself
is `workers.modelling`'s.
"""
