"""The training request's shape: field names, JSON types and help, for the CLI and the OpenAPI schema.

Validation, defaults and the fingerprint live in one place, the database (sql/migrations), so that a
plain SQL INSERT gets exactly what HTTP and the CLI get. `tests/test_contract.py` checks that these fields
are the columns of training_requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    json_type: str  # string, integer, number-array, string-array, object, array, timestamp
    help: str


FIELDS: tuple[Field, ...] = (
    Field("symbol", "string", "ticker to train on (required)"),
    Field("timeframe", "string", "bar timeframe (default 1d)"),
    Field("target_col", "string", "open, high, low or close (default close)"),
    Field("target_transform", "string", "log_return (default), pct_change, diff or raw"),
    Field("horizon", "integer", "bars ahead the target looks (default 1)"),
    Field(
        "algorithm",
        "string",
        "RandomForest (default), ExtraTrees, GradientBoosting, HistGradientBoosting, "
        "ElasticNet, Ridge, Lasso or LinearRegression",
    ),
    Field("hyperparameters", "object", "estimator parameters, checked against the estimator's constraints"),
    Field("features", "string-array", "feature names (default: the default feature set)"),
    Field("train_window", "integer", "bars in the training window (default 1000)"),
    Field("test_window", "integer", "last bars held out for scoring (default 250)"),
    Field("data_end", "timestamp", "last bar the model may see (default: the latest bar at enqueue time)"),
    Field("cv_folds", "integer", "time-series CV folds (default 5)"),
    Field("cv_strategy", "string", "expanding (default), sliding or purged"),
    Field("context_symbols", "string-array", "other symbols whose bars feed features (at most 10)"),
    Field("alpha_grid", "number-array", "alpha values tuned by inner time-series CV"),
    Field("l1_ratio_grid", "number-array", "l1_ratio values tuned by inner time-series CV (ElasticNet)"),
    Field("regime_configs", "array", 'regimes, e.g. [{"kind": "volatility", "mode": "split"}]'),
    Field("parent_model_id", "integer", "model this one evolves from"),
    Field("timeout_s", "integer", "seconds before training is killed (default: SFQ_TIMEOUT_S, 3600)"),
    Field("run", "integer", "run number of an otherwise identical spec (default 1)"),
    Field("retrain_of", "integer", "model this one retrains"),
    Field("priority", "integer", "queue priority, -100..100, higher first (default 0; not fingerprinted)"),
    Field(
        "execution_lag",
        "integer",
        "bars from the signal's close to the entry's close, 0..100 (default 1): the label and the backtest "
        "run from that close to target_col horizon bars later",
    ),
    Field(
        "evaluation",
        "object",
        'out-of-sample evaluation: {"kind": "holdout"} (default: the last test_window bars) or '
        '{"kind": "walk_forward", "refit_every": 21, "window": "expanding" or "sliding", "start": null}',
    ),
    Field(
        "lockbox_start",
        "timestamp",
        "start of a final period no metric, backtest or leaderboard sees, evaluated once on request "
        "(POST /models/{id}/lockbox); at or before data_end (default: none)",
    ),
    Field(
        "traceparent",
        "string",
        "W3C trace context the training and backtest spans join (00-<trace id>-<span id>-<flags>; "
        "default: the submitting API's or CLI's span when tracing is on, else none)",
    ),
)

_JSON_SCHEMA = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "object": {"type": "object"},
    "array": {"type": "array"},
    "timestamp": {"type": "string", "format": "date-time"},
    "string-array": {"type": "array", "items": {"type": "string"}},
    "number-array": {"type": "array", "items": {"type": "number"}},
}


def request_schema(batch: bool = False) -> dict:
    """A request's JSON schema; a batch sets target_col itself (one model per target)."""
    return {
        "type": "object",
        "required": ["symbol"],
        "additionalProperties": False,
        "properties": {
            f.name: {**_JSON_SCHEMA[f.json_type], "description": f.help}
            for f in FIELDS
            if not (batch and f.name == "target_col")
        },
    }
