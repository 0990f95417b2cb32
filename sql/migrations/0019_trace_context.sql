-- sfq 0019: trace context kept with the request (issue 16). A request's W3C traceparent (set by the API's
-- or the CLI's "send training" span, or by a SQL caller in its INSERT) is carried to its model, so that
-- the worker's "process training" span and the model's backtests join the submitter's trace, whichever
-- worker runs them and however often the job is rescued. Checked by sfq_canonical_request (requests.sql).
ALTER TABLE training_requests ADD COLUMN traceparent text;
COMMENT ON COLUMN training_requests.traceparent IS
    'W3C trace context (00-<trace id>-<span id>-<flags>) the model''s training and backtest spans belong to.';
ALTER TABLE models ADD COLUMN traceparent text;
COMMENT ON COLUMN models.traceparent IS
    'The W3C trace context of the request that made the model: its training and backtests are spans of that trace.';
