-- Rescue of jobs whose worker died, and pruning of finished queue jobs.
--
-- Every worker daemon calls sfq_rescue_stalled_jobs every few seconds (no cron to install). A training
-- job in `doing` whose worker's heartbeat is older than `stale_after_s` (or whose worker row is gone)
-- is closed as failed and its model gets a NEW job. A new job rather than a retry of the old one: if
-- the "dead" worker was only stalled and comes back, Procrastinate finishing its old job cannot touch
-- the new one, and its result writes are refused because the model's attempt moved on (fencing).

-- One row per attempt at training a model: who ran it, when, and how it ended (completed, failed,
-- requeued, lost, cancelled). Kept by a trigger on models, so every path is logged the same way.
CREATE TABLE model_attempts (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    job_id bigint,
    worker_host text,
    worker_pid integer,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    outcome text,
    PRIMARY KEY (model_id, attempt)
);

CREATE FUNCTION sfq_log_attempt() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.attempts > OLD.attempts THEN
        INSERT INTO model_attempts (model_id, attempt, job_id, worker_host, worker_pid, started_at)
        VALUES (NEW.id, NEW.attempts, NEW.job_id, NEW.worker_host, NEW.worker_pid, coalesce(NEW.started_at, now()));
    ELSIF OLD.status = 'running' AND NEW.status <> 'running' THEN
        UPDATE model_attempts
           SET ended_at = now(),
               outcome = CASE NEW.status WHEN 'queued' THEN 'requeued' ELSE NEW.status::text END
         WHERE model_id = NEW.id AND attempt = NEW.attempts AND outcome IS NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER models_log_attempt AFTER UPDATE OF attempts, status ON models
    FOR EACH ROW EXECUTE FUNCTION sfq_log_attempt();

CREATE FUNCTION sfq_rescue_stalled_jobs(stale_after_s double precision, max_attempts integer)
    RETURNS TABLE (model_id bigint, old_job_id bigint, new_job_id bigint, outcome text)
    LANGUAGE plpgsql AS $$
DECLARE
    stalled record;
    job_ids bigint[];
    lost_attempts integer;
BEGIN
    FOR stalled IN
        SELECT j.id, (j.args->>'model_id')::bigint AS model_id
          FROM procrastinate_jobs j
          LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
         WHERE j.status = 'doing' AND j.task_name = 'train_model'
           AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => stale_after_s))
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        UPDATE procrastinate_jobs SET status = 'failed' WHERE id = stalled.id;
        model_id := stalled.model_id;
        old_job_id := stalled.id;
        new_job_id := NULL;
        SELECT m.attempts INTO lost_attempts FROM models m
         WHERE m.id = stalled.model_id AND m.status IN ('queued', 'running') FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 'model already finished';
        ELSE
            UPDATE model_attempts a SET ended_at = now(), outcome = 'lost'
             WHERE a.model_id = stalled.model_id AND a.attempt = lost_attempts AND a.outcome IS NULL;
            IF lost_attempts >= max_attempts THEN
                UPDATE models SET status = 'failed', finished_at = now(),
                       error = format('worker lost %s times (last: job %s); not retried', lost_attempts, stalled.id)
                 WHERE id = stalled.model_id;
                outcome := 'failed: too many attempts';
            ELSE
                job_ids := procrastinate_defer_jobs_v1(ARRAY[ROW(
                    'training', 'train_model', 0, 'model:' || stalled.model_id, NULL,
                    jsonb_build_object('model_id', stalled.model_id), NULL
                )::procrastinate_job_to_defer_v1]);
                new_job_id := job_ids[1];
                UPDATE models SET status = 'queued', job_id = new_job_id,
                       error = format('attempt %s lost its worker (job %s); rescued as job %s',
                                      lost_attempts, stalled.id, new_job_id)
                 WHERE id = stalled.model_id;
                outcome := 'rescued';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Finished queue jobs (and their events) older than the retention; models and results are untouched.
CREATE FUNCTION sfq_prune_finished_jobs(older_than_days integer) RETURNS integer
    LANGUAGE sql AS $$
    WITH pruned AS (
        DELETE FROM procrastinate_jobs j
         WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
           AND NOT EXISTS (SELECT 1 FROM procrastinate_periodic_defers p WHERE p.job_id = j.id)
           AND coalesce((SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id), '-infinity')
               < now() - make_interval(days => older_than_days)
        RETURNING 1
    )
    SELECT count(*)::integer FROM pruned
$$;
