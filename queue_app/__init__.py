"""sfq's contract: configuration, the request's shape, the database, enqueueing, the HTTP API and the CLI.

Nothing here imports scikit-learn: training lives in `workers`, which depends on this package.
"""
