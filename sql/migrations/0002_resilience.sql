-- Rescue of jobs whose worker died, an attempt log, and pruning of finished queue jobs.
--
-- Every worker daemon calls sfq_rescue_stalled_jobs every few seconds (no cron to install). A training
-- job in `doing` whose worker's heartbeat is older than `stale_after_s` (or whose worker row is gone)
-- is closed as failed and its model gets a NEW job, recorded in models.job_id. Only that job may run
-- the model (start_model checks it), so an old job that comes back (Procrastinate retrying it for a
-- worker that was only stalled) is skipped, and the stalled worker's late writes are refused because
-- the model's attempt moved on (fencing).

-- One row per attempt at training a model: who ran it, when, and how it ended (completed, failed,
-- requeued, lost, abandoned). Kept by a trigger on models, so every path is logged the same way.
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
        -- An attempt whose end was never recorded (its worker could not write it) is closed here.
        UPDATE model_attempts SET ended_at = now(), outcome = 'abandoned'
         WHERE model_id = NEW.id AND attempt < NEW.attempts AND outcome IS NULL;
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

-- Give a model whose job is gone a new one, or fail it when its workers were lost too often.
CREATE FUNCTION sfq_hand_on(model bigint, old_job bigint, max_attempts integer) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    lost integer;
    new_job bigint;
BEGIN
    UPDATE model_attempts SET ended_at = now(), outcome = 'lost'
     WHERE model_id = model AND outcome IS NULL;
    SELECT count(*) INTO lost FROM model_attempts WHERE model_id = model AND outcome = 'lost';
    IF lost >= max_attempts THEN
        UPDATE models SET status = 'failed', finished_at = now(),
               error = format('worker lost %s times (last: job %s); not retried', lost, old_job)
         WHERE id = model;
        RETURN 'failed: too many lost attempts';
    END IF;
    new_job := sfq_defer_training(model);
    UPDATE models SET status = 'queued',
           error = format('job %s lost its worker; handed on to job %s', old_job, new_job)
     WHERE id = model;
    RETURN 'rescued';
END;
$$;

CREATE FUNCTION sfq_rescue_stalled_jobs(stale_after_s double precision, max_attempts integer,
                                        own_worker bigint DEFAULT NULL)
    RETURNS TABLE (model_id bigint, old_job_id bigint, new_job_id bigint, outcome text)
    LANGUAGE plpgsql AS $$
DECLARE
    stalled record;
BEGIN
    -- Jobs in `doing` whose worker stopped sending heartbeats (never the caller's own job).
    FOR stalled IN
        SELECT j.id, (j.args->>'model_id')::bigint AS model_id
          FROM procrastinate_jobs j
          LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
         WHERE j.status = 'doing' AND j.task_name = 'train_model'
           AND (own_worker IS NULL OR j.worker_id IS DISTINCT FROM own_worker)
           AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => stale_after_s))
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        UPDATE procrastinate_jobs SET status = 'failed' WHERE id = stalled.id;
        model_id := stalled.model_id;
        old_job_id := stalled.id;
        PERFORM 1 FROM models m
         WHERE m.id = stalled.model_id AND m.status IN ('queued', 'running') AND m.job_id = stalled.id
           FOR UPDATE;
        outcome := CASE WHEN FOUND THEN sfq_hand_on(stalled.model_id, stalled.id, max_attempts)
                        ELSE 'model already finished or handed on' END;
        new_job_id := (SELECT m.job_id FROM models m WHERE m.id = stalled.model_id AND m.status = 'queued');
        RETURN NEXT;
    END LOOP;

    -- Safety net: unfinished models whose current job has ended or vanished (a worker could not record
    -- the model's end before Procrastinate recorded the job's).
    FOR stalled IN
        SELECT m.id AS model_id, m.job_id
          FROM models m
          LEFT JOIN procrastinate_jobs j ON j.id = m.job_id
         WHERE m.status IN ('queued', 'running')
           AND (j.id IS NULL OR j.status NOT IN ('todo', 'doing'))
           FOR UPDATE OF m SKIP LOCKED
    LOOP
        model_id := stalled.model_id;
        old_job_id := stalled.job_id;
        outcome := 'orphan ' || sfq_hand_on(stalled.model_id, stalled.job_id, max_attempts);
        new_job_id := (SELECT m.job_id FROM models m WHERE m.id = stalled.model_id AND m.status = 'queued');
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
           AND coalesce((SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id), '-infinity')
               < now() - make_interval(days => older_than_days)
        RETURNING 1
    )
    SELECT count(*)::integer FROM pruned
$$;
