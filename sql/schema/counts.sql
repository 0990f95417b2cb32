-- sfq/counts: the counters that users' counts come from without a scan (the leaderboard's total, queue
-- depth, the training-time histogram), kept by statement-level triggers with transition tables: a bulk
-- INSERT (a sweep) adds to each of its keys once, not once per row.
--
-- A counter is a total plus changes (tables.sql): a statement adds its changes to its backend's rows
-- (pg_backend_pid(): no other open transaction writes them, so concurrent writers never wait on each other's
-- counter row, as they all did on one row per key before 0021), and one writer in a while folds every
-- backend's changes into the totals (sfq_fold_counts). The views below add both up: exact in any snapshot.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- The training-time histogram's upper bounds, in seconds (GET /metrics' sfq_training_duration_seconds).
-- sfq_training_durations counts in these buckets: after changing them, `SELECT sfq_recount()`.
CREATE OR REPLACE FUNCTION sfq_duration_bounds() RETURNS double precision[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}'::double precision[]
$$;

-- A model's training time (last attempt) when it is completed, else NULL: what the histogram counts.
CREATE OR REPLACE FUNCTION sfq_training_seconds(status sfq_model_status, started_at timestamptz,
                                                finished_at timestamptz) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status = 'completed' THEN extract(epoch FROM finished_at - started_at)::double precision END
$$;

-- The histogram bucket (its upper bound) of a training time; none without one.
CREATE OR REPLACE FUNCTION sfq_duration_bucket(seconds double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce((SELECT min(b) FROM unnest(sfq_duration_bounds()) AS b WHERE seconds <= b), 'infinity')
$$;

-- Adds grouped changes (one element per symbol, algorithm, status and duration bucket) to the model
-- counters: `models` models, `seconds` of training among them (NULL bucket, or no buckets: no training
-- time counted), in this backend's rows of the changes.
-- PL/pgSQL, so that its statements' plans are cached (a SQL function's are planned at every call).
CREATE OR REPLACE FUNCTION sfq_add_model_counts(symbols text[], algorithms text[], statuses sfq_model_status[],
                                                buckets double precision[], models bigint[],
                                                seconds double precision[]) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sfq_model_count_changes AS c (symbol, algorithm, status, models, backend)
    SELECT d.symbol, d.algorithm, d.status, sum(d.n), pg_backend_pid()
      FROM unnest(symbols, algorithms, statuses, models) AS d(symbol, algorithm, status, n)
     GROUP BY 1, 2, 3 HAVING sum(d.n) <> 0
        ON CONFLICT (symbol, algorithm, status, backend) DO UPDATE SET models = c.models + excluded.models;
    IF buckets IS NOT NULL THEN
        INSERT INTO sfq_training_duration_changes AS t (algorithm, le, models, seconds, backend)
        SELECT d.algorithm, d.le, sum(d.n), coalesce(sum(d.s), 0), pg_backend_pid()
          FROM unnest(algorithms, buckets, models, seconds) AS d(algorithm, le, n, s)
         WHERE d.le IS NOT NULL
         GROUP BY 1, 2 HAVING sum(d.n) <> 0 OR sum(d.s) <> 0
            ON CONFLICT (algorithm, le, backend) DO UPDATE
           SET models = t.models + excluded.models, seconds = t.seconds + excluded.seconds;
    END IF;
    PERFORM sfq_fold_counts_now_and_then();
END;
$$;

-- Folds every backend's changes into the totals, unless another transaction is folding (then it skips:
-- no fold waits for another). Rows another open transaction is writing are left for the next fold. A
-- backend whose rows this fold took waits, at its next counted write, for the folding transaction to end:
-- a fold runs inside a writing transaction (sfq_fold_counts_now_and_then), so for as long as that one runs.
-- Returns whether it folded.
CREATE OR REPLACE FUNCTION sfq_fold_counts() RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(sfq_fold_counts_lock()) THEN
        RETURN false;
    END IF;
    WITH folded AS (
        DELETE FROM sfq_model_count_changes c
         WHERE (c.symbol, c.algorithm, c.status, c.backend) IN (
               SELECT symbol, algorithm, status, backend FROM sfq_model_count_changes FOR UPDATE SKIP LOCKED)
        RETURNING c.symbol, c.algorithm, c.status, c.models
    )
    INSERT INTO sfq_model_count_totals AS c (symbol, algorithm, status, models)
    SELECT symbol, algorithm, status, sum(models) FROM folded GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (symbol, algorithm, status) DO UPDATE SET models = c.models + excluded.models;
    WITH folded AS (
        DELETE FROM sfq_training_duration_changes c
         WHERE (c.algorithm, c.le, c.backend) IN (
               SELECT algorithm, le, backend FROM sfq_training_duration_changes FOR UPDATE SKIP LOCKED)
        RETURNING c.algorithm, c.le, c.models, c.seconds
    )
    INSERT INTO sfq_training_duration_totals AS t (algorithm, le, models, seconds)
    SELECT algorithm, le, sum(models), sum(seconds) FROM folded GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (algorithm, le) DO UPDATE
       SET models = t.models + excluded.models, seconds = t.seconds + excluded.seconds;
    WITH folded AS (
        DELETE FROM sfq_job_count_changes c
         WHERE (c.queue_name, c.status, c.backend) IN (
               SELECT queue_name, status, backend FROM sfq_job_count_changes FOR UPDATE SKIP LOCKED)
        RETURNING c.queue_name, c.status, c.jobs
    )
    INSERT INTO sfq_job_count_totals AS c (queue_name, status, jobs)
    SELECT queue_name, status, sum(jobs) FROM folded GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (queue_name, status) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    RETURN true;
END;
$$;

-- The advisory lock a fold holds until its transaction ends (sfq_recount waits for it).
CREATE OR REPLACE FUNCTION sfq_fold_counts_lock() RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 7310052183020150001
$$;

-- One writing transaction in 256 folds (by its transaction id). A backend's changes are rewritten in
-- place, so they do not grow with its transactions: a fold only gathers the rows of backends that came
-- and went (a fold costs about a millisecond; one every 64 transactions was 5% of an enqueue).
CREATE OR REPLACE FUNCTION sfq_fold_counts_now_and_then() RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF txid_current() % 256 = 0 THEN
        PERFORM sfq_fold_counts();
    END IF;
END;
$$;

-- A statement's old rows count out and its new rows in, grouped: the rows an update left unchanged (in
-- status, times, symbol, algorithm) cancel out and write nothing. (No join of the two: a plan cached for
-- one-row statements would join a bulk update's row by row.)
-- A model inserted by a training request's row trigger (training_requests_accept) is counted with the
-- other new models of that statement, once, by the statement's trigger (sfq_defer_training_requests,
-- requests.sql): counted here, a bulk INSERT of n requests would update the same counter row n times in
-- one transaction. models_count_inserted's WHEN leaves those out (below).
CREATE OR REPLACE FUNCTION sfq_count_models() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    symbols text[];
    algorithms text[];
    statuses sfq_model_status[];
    buckets double precision[];
    models bigint[];
    seconds double precision[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(symbol), array_agg(algorithm), array_agg(status), array_agg(le), array_agg(n),
               array_agg(s)
          INTO symbols, algorithms, statuses, buckets, models, seconds
          FROM (SELECT symbol, algorithm, status, sfq_duration_bucket(s) AS le, sum(sign) AS n, sum(sign * s) AS s
                  FROM (SELECT symbol, algorithm, sfq_training_seconds(status, started_at, finished_at) AS s,
                               status, 1 AS sign FROM new_rows
                        UNION ALL
                        SELECT symbol, algorithm, sfq_training_seconds(status, started_at, finished_at),
                               status, -1 FROM old_rows) AS versions
                 GROUP BY 1, 2, 3, 4
                HAVING sum(sign) <> 0 OR abs(sum(sign * s)) > 1e-6) AS grouped;  -- a time changed
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(symbol), array_agg(algorithm), array_agg(status), array_agg(le), array_agg(n),
               array_agg(s)
          INTO symbols, algorithms, statuses, buckets, models, seconds
          FROM (SELECT symbol, algorithm, status, sfq_duration_bucket(s) AS le, count(*) AS n, sum(s) AS s
                  FROM (SELECT *, sfq_training_seconds(status, started_at, finished_at) AS s FROM new_rows) m
                 GROUP BY 1, 2, 3, 4) AS grouped;
    ELSE
        SELECT array_agg(symbol), array_agg(algorithm), array_agg(status), array_agg(le), array_agg(n),
               array_agg(s)
          INTO symbols, algorithms, statuses, buckets, models, seconds
          FROM (SELECT symbol, algorithm, status, sfq_duration_bucket(s) AS le, -count(*) AS n, -sum(s) AS s
                  FROM (SELECT *, sfq_training_seconds(status, started_at, finished_at) AS s FROM old_rows) m
                 GROUP BY 1, 2, 3, 4) AS grouped;
    END IF;
    IF symbols IS NOT NULL THEN
        PERFORM sfq_add_model_counts(symbols, algorithms, statuses, buckets, models, seconds);
    END IF;
    RETURN NULL;
END;
$$;

-- A statement's jobs in, out, or moved between statuses (an update's unchanged rows cancel out), added to
-- this backend's rows in one INSERT each: no arrays built first (every enqueue, fetch and finish fires it;
-- the INSERT's form took 16 µs less an enqueue than the arrays', and about 20 µs less a status change).
CREATE OR REPLACE FUNCTION sfq_count_jobs() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sfq_job_count_changes AS c (queue_name, status, jobs, backend)
        SELECT queue_name::text, status, count(*), pg_backend_pid() FROM new_rows GROUP BY 1, 2
            ON CONFLICT (queue_name, status, backend) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO sfq_job_count_changes AS c (queue_name, status, jobs, backend)
        SELECT queue_name, status, sum(sign), pg_backend_pid()
          FROM (SELECT queue_name::text, status, 1 AS sign FROM new_rows
                UNION ALL SELECT queue_name::text, status, -1 FROM old_rows) AS versions
         GROUP BY 1, 2 HAVING sum(sign) <> 0
            ON CONFLICT (queue_name, status, backend) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    ELSE
        INSERT INTO sfq_job_count_changes AS c (queue_name, status, jobs, backend)
        SELECT queue_name::text, status, -count(*), pg_backend_pid() FROM old_rows GROUP BY 1, 2
            ON CONFLICT (queue_name, status, backend) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    END IF;
    IF FOUND THEN  -- not for a statement that moved no job
        PERFORM sfq_fold_counts_now_and_then();
    END IF;
    RETURN NULL;
END;
$$;

-- A truncated table counts nothing.
CREATE OR REPLACE FUNCTION sfq_forget_counts() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'models' THEN
        DELETE FROM sfq_model_count_totals;
        DELETE FROM sfq_model_count_changes;
        DELETE FROM sfq_training_duration_totals;
        DELETE FROM sfq_training_duration_changes;
    ELSE
        DELETE FROM sfq_job_count_totals;
        DELETE FROM sfq_job_count_changes;
    END IF;
    RETURN NULL;
END;
$$;

-- Every counter again from the rows (what `sfq db upgrade` does once, when 0017 added them to a database
-- with models; and a repair), with writers to the counted tables and folds held off meanwhile.
CREATE OR REPLACE FUNCTION sfq_recount() RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE models, procrastinate_jobs IN SHARE MODE;
    PERFORM pg_advisory_xact_lock(sfq_fold_counts_lock());
    DELETE FROM sfq_model_count_totals;
    DELETE FROM sfq_model_count_changes;
    DELETE FROM sfq_training_duration_totals;
    DELETE FROM sfq_training_duration_changes;
    DELETE FROM sfq_job_count_totals;
    DELETE FROM sfq_job_count_changes;
    INSERT INTO sfq_model_count_totals (symbol, algorithm, status, models)
    SELECT symbol, algorithm, status, count(*) FROM models GROUP BY 1, 2, 3;
    INSERT INTO sfq_training_duration_totals (algorithm, le, models, seconds)
    SELECT algorithm, sfq_duration_bucket(seconds), count(*), sum(seconds)
      FROM (SELECT algorithm, sfq_training_seconds(status, started_at, finished_at) AS seconds FROM models) AS m
     WHERE seconds IS NOT NULL GROUP BY 1, 2;
    INSERT INTO sfq_job_count_totals (queue_name, status, jobs)
    SELECT queue_name, status, count(*) FROM procrastinate_jobs GROUP BY 1, 2;
END;
$$;

-- The counters as users' counts read them: each total with its changes not folded in yet.
CREATE OR REPLACE VIEW sfq_model_counts AS
SELECT symbol, algorithm, status, sum(models)::bigint AS models
  FROM (SELECT symbol, algorithm, status, models FROM sfq_model_count_totals
        UNION ALL
        SELECT symbol, algorithm, status, models FROM sfq_model_count_changes) AS c
 GROUP BY symbol, algorithm, status;
COMMENT ON VIEW sfq_model_counts IS 'How many models have each symbol, algorithm and status (kept by triggers).';

CREATE OR REPLACE VIEW sfq_training_durations AS
SELECT algorithm, le, sum(models)::bigint AS models, sum(seconds) AS seconds
  FROM (SELECT algorithm, le, models, seconds FROM sfq_training_duration_totals
        UNION ALL
        SELECT algorithm, le, models, seconds FROM sfq_training_duration_changes) AS d
 GROUP BY algorithm, le;
COMMENT ON VIEW sfq_training_durations IS
    'Completed models by algorithm and training-time bucket, with their seconds (kept by triggers).';

CREATE OR REPLACE VIEW sfq_job_counts AS
SELECT queue_name, status, sum(jobs)::bigint AS jobs
  FROM (SELECT queue_name, status, jobs FROM sfq_job_count_totals
        UNION ALL
        SELECT queue_name, status, jobs FROM sfq_job_count_changes) AS j
 GROUP BY queue_name, status;
COMMENT ON VIEW sfq_job_counts IS 'How many queue jobs each queue has in each status (kept by triggers).';

-- Models inserted inside a trigger are a request's (training_requests_accept; a retrain's or an
-- evolution's request too), counted once a statement (sfq_count_models' comment). Left out by WHEN, not
-- by a test in the function: a trigger left out is not fired at all (its event is not queued). Its call was
-- 3.7-4.6 us of a single request, 2.4-2.5 us a request of a bulk INSERT (each model its own INSERT).
CREATE OR REPLACE TRIGGER models_count_inserted AFTER INSERT ON models
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION sfq_count_models();
CREATE OR REPLACE TRIGGER models_count_updated AFTER UPDATE ON models
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sfq_count_models();
CREATE OR REPLACE TRIGGER models_count_deleted AFTER DELETE ON models
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sfq_count_models();
CREATE OR REPLACE TRIGGER models_count_truncated AFTER TRUNCATE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_forget_counts();
CREATE OR REPLACE TRIGGER jobs_count_inserted AFTER INSERT ON procrastinate_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sfq_count_jobs();
CREATE OR REPLACE TRIGGER jobs_count_updated AFTER UPDATE ON procrastinate_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sfq_count_jobs();
CREATE OR REPLACE TRIGGER jobs_count_deleted AFTER DELETE ON procrastinate_jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sfq_count_jobs();
CREATE OR REPLACE TRIGGER jobs_count_truncated AFTER TRUNCATE ON procrastinate_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_forget_counts();

-- Counters added to a database that had models (0017) start from its rows: a model always counts in
-- some row of sfq_model_counts (rows at zero stay), so models without one mean it was never filled.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM sfq_model_counts) AND (EXISTS (SELECT FROM models)
                                                       OR EXISTS (SELECT FROM procrastinate_jobs)) THEN
        PERFORM sfq_recount();
    END IF;
END;
$$;
