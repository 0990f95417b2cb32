-- sfq 0011: walk-forward evaluation. A request's `evaluation` (default holdout: one held-out window, as
-- before, and not hashed, so every existing fingerprint stands) may ask for a walk-forward over the whole
-- history; its stitched out-of-sample predictions are stored compactly, one row per model.
ALTER TABLE training_requests ADD COLUMN evaluation jsonb DEFAULT '{"kind": "holdout"}';
COMMENT ON COLUMN training_requests.evaluation IS
    'How the model is judged out of sample: {"kind": "holdout"} (the last test_window bars) or '
    '{"kind": "walk_forward", "refit_every": 21, "window": "expanding" | "sliding", "start": null}.';

CREATE TABLE model_prediction_series (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    first_ts timestamptz NOT NULL,
    seconds integer[] NOT NULL,  -- each prediction's bar, in seconds after first_ts
    predicted real[] NOT NULL,
    actual real[] NOT NULL,
    CHECK (cardinality(seconds) = cardinality(predicted) AND cardinality(predicted) = cardinality(actual))
);
COMMENT ON TABLE model_prediction_series IS
    'A walk-forward''s stitched out-of-sample predictions, 12 bytes each (float4 values, int4 offsets).';
