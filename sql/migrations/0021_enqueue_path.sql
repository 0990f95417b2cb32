-- sfq 0021: an enqueue path that scales with connections (issue 15). The counters of 0017 were rows every
-- enqueue updated: concurrent enqueues waited on each other's row until commit. Now each counter is a total
-- (the 0017 tables, renamed) plus changes kept per writing backend, folded into the totals now and then;
-- views under the old names add both up (sql/schema/counts.sql).

ALTER TABLE sfq_model_counts RENAME TO sfq_model_count_totals;
ALTER INDEX sfq_model_counts_pkey RENAME TO sfq_model_count_totals_pkey;
ALTER TABLE sfq_training_durations RENAME TO sfq_training_duration_totals;
ALTER INDEX sfq_training_durations_pkey RENAME TO sfq_training_duration_totals_pkey;
ALTER TABLE sfq_job_counts RENAME TO sfq_job_count_totals;
ALTER INDEX sfq_job_counts_pkey RENAME TO sfq_job_count_totals_pkey;
COMMENT ON TABLE sfq_model_count_totals IS
    'How many models have each symbol, algorithm and status, up to the changes not folded in yet.';
COMMENT ON TABLE sfq_training_duration_totals IS
    'Completed models by algorithm and training-time bucket, with their seconds, up to the changes not folded in yet.';
COMMENT ON TABLE sfq_job_count_totals IS
    'How many queue jobs each queue has in each status, up to the changes not folded in yet.';

CREATE TABLE sfq_model_count_changes (
    symbol text NOT NULL,
    algorithm text NOT NULL,
    status sfq_model_status NOT NULL,
    models bigint NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (symbol, algorithm, status, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_model_count_changes IS
    'Changes to sfq_model_count_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';

CREATE TABLE sfq_training_duration_changes (
    algorithm text NOT NULL,
    le double precision NOT NULL,
    models bigint NOT NULL,
    seconds double precision NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (algorithm, le, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_training_duration_changes IS
    'Changes to sfq_training_duration_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';

CREATE TABLE sfq_job_count_changes (
    queue_name text NOT NULL,
    status procrastinate_job_status NOT NULL,
    jobs bigint NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (queue_name, status, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_job_count_changes IS
    'Changes to sfq_job_count_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';
