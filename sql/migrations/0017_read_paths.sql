-- sfq 0017: read paths that do not grow with the tables (issue 15). Counts shown to users come from
-- counters kept by statement-level triggers (sql/schema/counts.sql), filled from the rows there are by the
-- first `sfq db upgrade` that has them; the leaderboard's sort keys, filters and the operators' views
-- (recent failures, throughput) are indexed.

-- Models by symbol, algorithm and status: the leaderboard's total for any of its filters.
CREATE TABLE sfq_model_counts (
    symbol text NOT NULL,
    algorithm text NOT NULL,
    status sfq_model_status NOT NULL,
    models bigint NOT NULL,
    PRIMARY KEY (symbol, algorithm, status)
);
COMMENT ON TABLE sfq_model_counts IS 'How many models have each symbol, algorithm and status (kept by triggers).';

-- Completed models' training times by algorithm and histogram bucket (GET /metrics).
CREATE TABLE sfq_training_durations (
    algorithm text NOT NULL,
    le double precision NOT NULL,  -- the bucket's upper bound in seconds (sfq_duration_bounds), or infinity
    models bigint NOT NULL,
    seconds double precision NOT NULL,
    PRIMARY KEY (algorithm, le)
);
COMMENT ON TABLE sfq_training_durations IS
    'Completed models by algorithm and training-time bucket, with their seconds (kept by triggers).';

-- Queue jobs by queue and status (GET /metrics, `sfq status`, the dashboard).
CREATE TABLE sfq_job_counts (
    queue_name text NOT NULL,
    status procrastinate_job_status NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (queue_name, status)
);
COMMENT ON TABLE sfq_job_counts IS 'How many queue jobs each queue has in each status (kept by triggers).';

-- The leaderboard: a filter then the id order from one index each; a sort on a stored metric from its own
-- index on the completed models (the expression list_models orders by; vocabulary.SORTABLE_METRICS).
DROP INDEX models_status;
DROP INDEX models_symbol;
DROP INDEX models_algorithm;
CREATE INDEX models_status ON models (status, id);
CREATE INDEX models_symbol ON models (symbol, id);
CREATE INDEX models_algorithm ON models (algorithm, id);
CREATE INDEX models_metric_directional_accuracy ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'directional_accuracy') = 'number' THEN (metrics ->> 'directional_accuracy')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_directional_base_rate ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'directional_base_rate') = 'number' THEN (metrics ->> 'directional_base_rate')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_ic ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'ic') = 'number' THEN (metrics ->> 'ic')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_mae ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'mae') = 'number' THEN (metrics ->> 'mae')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_n ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'n') = 'number' THEN (metrics ->> 'n')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_r2 ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'r2') = 'number' THEN (metrics ->> 'r2')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_rmse ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'rmse') = 'number' THEN (metrics ->> 'rmse')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_directional_accuracy_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_directional_accuracy_mean') = 'number' THEN (metrics ->> 'cv_directional_accuracy_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_ic_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_ic_mean') = 'number' THEN (metrics ->> 'cv_ic_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_r2_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_r2_mean') = 'number' THEN (metrics ->> 'cv_r2_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_rmse_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_rmse_mean') = 'number' THEN (metrics ->> 'cv_rmse_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_naive_rmse ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'naive_rmse') = 'number' THEN (metrics ->> 'naive_rmse')::double precision END), id)
    WHERE status = 'completed';
-- Throughput over the last minutes, and the last failures.
CREATE INDEX models_finished_at ON models (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX models_failures ON models (finished_at DESC NULLS LAST, id DESC) WHERE status = 'failed';
