-- sfq/queue: sfq on Procrastinate. The rows of sfq's jobs (procrastinate_job_to_defer_v1) and their
-- deferral, the rescue of jobs whose worker died, and the pruning of finished jobs.
--
-- A model's training job is built by sfq_training_job only, and deferred by sfq_defer_training only,
-- whatever made the model: the training_requests statement trigger (every request), a sweep, a rescue.
-- Only the job recorded in models.job_id may run the model (the worker's start_model checks it), so an old
-- job that comes back after a rescue is skipped, and a stalled worker's late writes are refused (fencing).
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- ---------------------------------------------------------------------------------------------------
-- Jobs.

-- A model's training job, as Procrastinate defers it (inlined where it is called).
CREATE OR REPLACE FUNCTION sfq_training_job(model bigint, priority integer) RETURNS procrastinate_job_to_defer_v1
    LANGUAGE sql STABLE AS $$
    SELECT ROW('training', 'train_model', priority, 'model:' || model, NULL,
               jsonb_build_object('model_id', model), NULL)::procrastinate_job_to_defer_v1
$$;

-- The id of a job not deferred yet, from Procrastinate's sequence (its jobs' ids' default), so that a
-- model can record its job as it is written (inlined where it is called).
CREATE OR REPLACE FUNCTION sfq_new_job_id() RETURNS bigint
    LANGUAGE sql VOLATILE AS $$
    SELECT nextval('procrastinate_jobs_id_seq')
$$;

-- Models' training jobs, in the order given, each with the id its model already records in job_id
-- (reserved from Procrastinate's sequence when the model was written: sfq_insert_models, sfq_hand_on), so
-- that a new model is written once, with its job, not inserted and then updated (the update took about
-- 7 % of an enqueue, fired the model counters' trigger again, and left a dead row version a model).
-- procrastinate_defer_jobs_v1 takes no ids, so its INSERT is written here, with them: the same columns,
-- the same jobs (tests/test_schema.py fails if Procrastinate's function becomes more than this INSERT).
-- The recorded ids are read one by one, by primary key, through a cached plan, or, for many models (a
-- sweep), in one join planned for them: never a join through a cached plan, whose custom plan for a few
-- models looked cheaper than the generic one and was made again at every call (300 us an enqueue),
-- nor a generic one, which scanned all of models when planned on a small table (0008). Returns the
-- jobs' ids.
CREATE OR REPLACE FUNCTION sfq_defer_training(model_ids bigint[], priorities integer[]) RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    job_ids bigint[];
BEGIN
    IF cardinality(model_ids) > 32 THEN
        EXECUTE 'SELECT array_agg(m.job_id ORDER BY u.i) FROM unnest($1) WITH ORDINALITY AS u(id, i)'
                ' JOIN models m ON m.id = u.id'
           INTO job_ids USING model_ids;
    ELSE
        FOR i IN 1 .. cardinality(model_ids) LOOP
            job_ids[i] := (SELECT m.job_id FROM models m WHERE m.id = model_ids[i]);
        END LOOP;
    END IF;
    WITH inserted AS (
        INSERT INTO procrastinate_jobs (id, queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT d.id, (d.job).queue_name, (d.job).task_name, (d.job).priority, (d.job).lock,
               (d.job).queueing_lock, (d.job).args, (d.job).scheduled_at
          FROM (SELECT u.id, sfq_training_job(u.model, u.priority) AS job, u.i
                  FROM unnest(model_ids, job_ids, priorities) WITH ORDINALITY AS u(model, id, priority, i)) AS d
         ORDER BY d.i
        RETURNING id
    )
    SELECT array_agg(id) INTO job_ids FROM inserted;
    RETURN coalesce(job_ids, '{}');
END;
$$;

-- A live forecast's job (sfq_request_forecast, and its rescue).
CREATE OR REPLACE FUNCTION sfq_defer_forecast(forecast bigint) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    job_ids bigint[];
BEGIN
    job_ids := procrastinate_defer_jobs_v1(ARRAY[ROW(
        'prediction', 'predict_model', 0, 'forecast:' || forecast, NULL,
        jsonb_build_object('forecast_id', forecast), NULL
    )::procrastinate_job_to_defer_v1]);
    UPDATE model_forecasts SET job_id = job_ids[1], status = 'queued', error = NULL WHERE id = forecast;
    RETURN job_ids[1];
END;
$$;

-- A backtest's job (sfq_request_simulation, and its rescue).
CREATE OR REPLACE FUNCTION sfq_defer_simulation(simulation bigint, priority integer DEFAULT 0) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    job_ids bigint[];
BEGIN
    job_ids := procrastinate_defer_jobs_v1(ARRAY[ROW(
        'simulation', 'simulate_model', priority, 'simulation:' || simulation, NULL,
        jsonb_build_object('simulation_id', simulation), NULL
    )::procrastinate_job_to_defer_v1]);
    UPDATE simulation_history SET job_id = job_ids[1], status = 'queued', error = NULL WHERE id = simulation;
    RETURN job_ids[1];
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- Waking idle workers, and only when one may sleep (Procrastinate's trigger, disabled below, notified every
-- new job). A transaction that notifies holds a lock from its commit's start to its end, WAL flush
-- included, so notifying transactions commit one at a time: with a notification per enqueue, concurrent
-- enqueues were no faster than one connection (issue 15). A worker only sleeps (until a notification or
-- SFQ_POLL_INTERVAL_S) after a fetch found nothing; so an enqueue notifies unless no worker of its queue
-- is asleep or can fall asleep before the job is visible. That is decided with two advisory locks a
-- queue, which, unlike rows, are seen by other transactions at once:
--   - "asleep" (keys hashtext('sfq_asleep'), hashtext(queue)): held in share mode, at session level, by
--     every listening worker of the queue from just before its last empty fetch until a fetch gives it a
--     job;
--   - "barrier" (hashtext('sfq_barrier'), hashtext(queue)): held in share mode by every enqueue that did
--     not notify, from its decision to its commit. A worker takes it exclusively (and lets it go) after
--     taking "asleep" and before that last fetch, so it waits for those enqueues to commit, and its fetch
--     sees their jobs; an enqueue that comes while the worker waits for it cannot take it and notifies.
-- An enqueue skips its notification only if it takes "barrier" and finds "asleep" free (taken and
-- let go at once). A worker that sleeps holds "asleep" from before its barrier: an enqueue that decided
-- after the barrier saw it held and notified; one that decided before committed before the worker's
-- fetch, which saw its job (the proof in docs/BENCHMARKS.md, "Enqueue at scale").
-- The decision is made at commit (a deferred trigger), so that "barrier" is held only while the commit
-- is written, not while its transaction goes on; a worker waits for it at most lock_timeout
-- (sfq_fetch_job), then fetches again rather than sleep. A session that ever slept (a daemon's queue
-- connection, sfq.sleeper_session) always notifies: the probe would not see its own "asleep" locks, and
-- its enqueues are few (a rescue's new jobs). A job of another queue always notifies: only sfq's daemons
-- register asleep (a plain Procrastinate worker, as the no-op benchmark runs, does not). The keys are two
-- int4s, apart from the one-bigint keys sfq uses elsewhere.
--
-- Whom to wake (0028): Procrastinate's channels reach every listening daemon, and each fetched (about 100
-- fetches a job at 500 daemons). So a worker that sleeps also has a row a queue in sfq_sleepers, with the
-- channel its daemon LISTENs to (workers/daemon/app.py), written by the fetch it sleeps after (visible
-- when that fetch commits), and holds a third lock, "sleeper" (hashtext('sfq_sleeper'), its worker id),
-- from then until a fetch gives it a job. An enqueue that must notify takes, for each of its jobs of the
-- queue, one row (FOR UPDATE SKIP LOCKED: a concurrent enqueue takes another), deletes the worker's rows
-- and notifies its channel alone; a row whose "sleeper" lock is free is a worker gone (its session ended)
-- or awake: deleted, and the next one tried. A woken worker fetches after the commit: it takes a job, or
-- all were taken. Whoever it takes, each job notified has a fetch of its own after its commit, so no job
-- waits while its queue's sleepers sleep (a fetch that takes another job leaves its own to that job's).
-- A worker that fetched nothing and finds its rows gone registers again, past the barrier.
-- With no row left to take, the enqueue that holds "barrier" notifies no more: every worker then asleep
-- was woken by a row (and fetches again past the barrier, after this commit, if it finds nothing), and
-- one that registers waits at the barrier for this commit. One that does not hold it (a worker is at
-- the barrier, or between it and the commit of its rows), or that finds a row another transaction holds
-- (it may roll back), or a row without a channel (a daemon from before 0028), notifies Procrastinate's
-- channels, as before 0028: every listening worker of the queue wakes. Jobs beyond the sleepers are left
-- to the workers woken, each fetching again when its job ends (Procrastinate's worker loop).
-- A wake that reaches a worker dead since the probe, or busy (its fetch took another job as this one
-- committed), leaves the job to a later fetch: that worker's when its job ends, or a sleeper's that the
-- fleet's next round wakes (sfq_beat). SECURITY DEFINER: the deferred trigger runs as whoever commits,
-- who may not read sfq_sleepers. A call made for its effect is an assignment, not PERFORM: PL/pgSQL
-- evaluates an assignment's plain expression without starting the executor, which PERFORM's query does
-- (a few microseconds of every enqueue each).

CREATE OR REPLACE FUNCTION sfq_wake_sleepers() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    decided text := coalesce(current_setting('sfq.woken_queues', true), '');
    waking text;
    queue integer;
    barrier_held boolean;
    taken boolean := false;
    woken boolean;
    let_go boolean;
BEGIN
    IF position(',' || NEW.queue_name || ',' IN decided) > 0 THEN
        RETURN NULL;  -- decided for all of this transaction's jobs of the queue
    END IF;
    waking := coalesce(current_setting('sfq.waking_queues', true), '');
    IF position(',' || NEW.queue_name || ':' IN waking) = 0 THEN  -- this transaction's first job of the queue
        queue := hashtext(NEW.queue_name);
        -- Nested, not one AND: SQL does not fix the order in which an AND's terms are evaluated.
        IF NEW.queue_name IN ('training', 'prediction', 'simulation', 'study')  -- sfq's daemons' (vocabulary.py)
           AND current_setting('sfq.sleeper_session', true) IS DISTINCT FROM 'on' THEN
            barrier_held := pg_try_advisory_xact_lock_shared(hashtext('sfq_barrier'), queue);
            IF barrier_held THEN
                IF pg_try_advisory_lock(hashtext('sfq_asleep'), queue) THEN
                    let_go := pg_advisory_unlock(hashtext('sfq_asleep'), queue);
                    decided := set_config('sfq.woken_queues', decided || ',' || NEW.queue_name || ',', true);
                    RETURN NULL;  -- no worker asleep on this queue, and none falls asleep before this commits
                END IF;
            END IF;
            waking := set_config('sfq.waking_queues', waking || ',' || NEW.queue_name
                                 || CASE WHEN barrier_held THEN ':s,' ELSE ':b,' END, true);  -- s: holds it
        ELSE
            taken := true;  -- to the broadcast
        END IF;
    ELSE
        barrier_held := position(',' || NEW.queue_name || ':s,' IN waking) > 0;
    END IF;
    IF NOT taken THEN
        woken := sfq_wake_one_sleeper(NEW.queue_name, NEW.id);
        IF woken THEN
            RETURN NULL;
        END IF;
        taken := woken IS NULL;  -- a daemon from before 0028: the broadcast
    END IF;
    decided := set_config('sfq.woken_queues', decided || ',' || NEW.queue_name || ',', true);
    IF NOT taken AND barrier_held
       AND NOT EXISTS (SELECT 1 FROM sfq_sleepers s WHERE s.queue_name = NEW.queue_name) THEN
        RETURN NULL;  -- every sleeper woken; one falling asleep waits at the barrier for this commit
    END IF;
    PERFORM sfq_wake_every_worker(NEW.queue_name, NEW.id);
    RETURN NULL;
END;
$$;

-- One sleeper of `queue` woken for `job` (an enqueue's trigger, and the fleet's round for a job that
-- became due unheard): a row taken FOR UPDATE SKIP LOCKED (a concurrent caller takes another), its
-- worker's rows deleted and its daemon's channel notified. A row whose "sleeper" lock is free is a worker
-- gone (its session ended) or awake: deleted, and the next one tried. True when one was woken, false when
-- no row was left to take, NULL for a row without a channel (a daemon from before 0028: the caller wakes
-- every worker, sfq_wake_every_worker).
CREATE OR REPLACE FUNCTION sfq_wake_one_sleeper(queue varchar, job bigint) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    sleeper record;
    lock_key integer;
BEGIN
    LOOP
        SELECT s.worker_id, s.channel INTO sleeper FROM sfq_sleepers s
         WHERE s.queue_name = queue LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        -- Shared: two enqueues probing one worker's two rows at once both find a gone worker gone. Not
        -- a worker of this session (a daemon's round): its own lock would be granted it.
        lock_key := (sleeper.worker_id % 2147483648)::integer;  -- "sleeper"'s second key
        IF position(',' || sleeper.worker_id || ',' IN coalesce(current_setting('sfq.sleeper_workers', true), '')) = 0
           AND pg_try_advisory_lock_shared(hashtext('sfq_sleeper'), lock_key) THEN
            PERFORM pg_advisory_unlock_shared(hashtext('sfq_sleeper'), lock_key);
            DELETE FROM sfq_sleepers s WHERE s.worker_id = sleeper.worker_id AND s.queue_name = queue;
            CONTINUE;  -- its worker is gone, or awake
        END IF;
        IF sleeper.channel IS NULL THEN
            RETURN NULL;
        END IF;
        DELETE FROM sfq_sleepers s WHERE (s.worker_id, s.queue_name) IN (
            SELECT t.worker_id, t.queue_name FROM sfq_sleepers t
             WHERE t.worker_id = sleeper.worker_id FOR UPDATE SKIP LOCKED);
        PERFORM pg_notify(sleeper.channel, json_build_object(
            'type', 'job_inserted', 'job_id', job, 'queue', queue)::text);
        RETURN true;
    END LOOP;
END;
$$;

-- Every listening worker of `queue` woken for `job`, on Procrastinate's own channels (as before 0028).
CREATE OR REPLACE FUNCTION sfq_wake_every_worker(queue varchar, job bigint) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('type', 'job_inserted', 'job_id', job)::text;  -- Procrastinate's
BEGIN
    PERFORM pg_notify('procrastinate_queue_v1#' || queue, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
END;
$$;

DROP TRIGGER IF EXISTS sfq_jobs_wake_sleepers ON procrastinate_jobs;
CREATE CONSTRAINT TRIGGER sfq_jobs_wake_sleepers AFTER INSERT ON procrastinate_jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'todo')
    EXECUTE FUNCTION sfq_wake_sleepers();
ALTER TABLE procrastinate_jobs DISABLE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1;

-- A training job is deferred without Procrastinate's 'deferred' event: that event's row, its foreign
-- key's check (a lock on the job's row) and its trigger's call cost 5-10 % of the single-row enqueue rate
-- (issue 15 part 5, docs/BENCHMARKS.md). Nothing reads it: Procrastinate reads 'started' events (its
-- stalled jobs) and a finished job's last event (its retention, and sfq_prune_finished_jobs below), which
-- the status updates still write. When a training job was deferred is its model's submitted_at (a job
-- handed on after its worker was lost: that attempt's ended_at, model_attempts), and the fleet's round
-- tells a job that waits unheard by its id (sfq_beat). Every other job gets its event as before, from
-- Procrastinate's own function, called by a trigger whose WHEN leaves out sfq_training_job's task.
DROP TRIGGER IF EXISTS sfq_jobs_deferred_event ON procrastinate_jobs;
CREATE TRIGGER sfq_jobs_deferred_event AFTER INSERT ON procrastinate_jobs
    FOR EACH ROW WHEN (NEW.status = 'todo' AND NEW.task_name <> 'train_model')
    EXECUTE FUNCTION procrastinate_trigger_function_status_events_insert_v1();
ALTER TABLE procrastinate_jobs DISABLE TRIGGER procrastinate_trigger_status_events_insert_v1;

-- A listening worker's fetch (Procrastinate's fetch_job, through workers/daemon/app.py): a job of
-- `queues` or none, and whether the worker is now registered asleep on them. A fetch that finds nothing
-- while the worker is not registered registers it (takes "asleep"), waits at the barrier and fetches
-- again (its own statement: a snapshot after the barrier), then takes "sleeper" and writes its rows
-- (`channel`: its daemon's; NULL, an older daemon's call, is woken by the broadcast); a registered
-- worker whose rows an enqueue took (it was woken) does the same from the barrier on. A job found while
-- registered lets the locks and rows go. `asleep` NULL: an enqueue held the barrier (or a row) longer
-- than lock_timeout (a slow commit, or one whose decision was made immediate): not registered, to fetch
-- again soon. The "asleep" keys the session holds are kept in its setting sfq.asleep_keys (',k1,k2,':
-- the daemon's two workers share the session), the workers holding "sleeper" in sfq.sleeper_workers, not
-- read from pg_locks, whose every read copies the server's whole lock table: a setting rolls back with
-- an error, the lock does not, but an error here stops the daemon, and its connection with it.
-- Procrastinate's fetch is planned afresh (plan_cache_mode) unless the worker is registered asleep: a
-- session's cached plan is made from the statistics of when it was made, and one made while the queue
-- held a few dozen jobs (two sequential scans, the second for every job of the first) took 2.6 s a
-- fetch on average, 14 s at worst, when 200 woken workers fetched a burst of 1,000 jobs at once (issue 15
-- part 4). A sleeper's poll keeps the cached plan: planning every poll cost more than the polls did.
CREATE OR REPLACE FUNCTION sfq_fetch_job(queues varchar[], worker bigint, channel text DEFAULT NULL,
                                         OUT job procrastinate_jobs, OUT asleep boolean)
    LANGUAGE plpgsql AS $$
DECLARE
    names varchar[] := ARRAY(SELECT DISTINCT q FROM unnest(queues) AS q ORDER BY 1);
    keys integer[] := ARRAY(SELECT DISTINCT hashtext(q) FROM unnest(queues) AS q ORDER BY 1);
    held text := coalesce(current_setting('sfq.asleep_keys', true), '');
    usual_timeout text := current_setting('lock_timeout');
    usual_plans text := current_setting('plan_cache_mode');
    sleepers text := coalesce(current_setting('sfq.sleeper_workers', true), '');
    key integer;
BEGIN
    IF queues IS NULL OR worker IS NULL THEN
        RAISE EXCEPTION 'sfq_fetch_job needs the queues a worker may sleep on, and the worker';
    END IF;
    -- A worker the round presumed dead (silent past SFQ_RESCUE_AFTER_S: its row pruned, its jobs handed on)
    -- that was only stopped (SIGSTOP, a long pause) fetches again as itself: its row back, or the job's
    -- worker_id fails the foreign key and stops the daemon. Its late results are refused (fencing) as before.
    IF NOT EXISTS (SELECT 1 FROM procrastinate_workers w WHERE w.id = worker) THEN
        INSERT INTO procrastinate_workers (id, last_heartbeat) OVERRIDING SYSTEM VALUE VALUES (worker, now())
            ON CONFLICT DO NOTHING;
    END IF;
    IF (SELECT count(*) FROM sfq_sleepers s WHERE s.worker_id = worker) < cardinality(names) THEN
        PERFORM set_config('plan_cache_mode', 'force_custom_plan', true);  -- woken, or busy
    END IF;
    job := procrastinate_fetch_job_v2(queues, worker);
    PERFORM set_config('plan_cache_mode', usual_plans, true);
    IF job.id IS NULL THEN
        IF keys <@ ARRAY(SELECT k::integer FROM unnest(string_to_array(held, ',')) AS k WHERE k <> '') THEN
            IF (SELECT count(*) FROM sfq_sleepers s WHERE s.worker_id = worker) >= cardinality(names) THEN
                asleep := true;  -- registered, past the barrier, before an earlier fetch: its rows wait
                RETURN;
            END IF;
            -- Woken by an enqueue that took its rows, and nothing left to fetch: registers again.
        ELSE
            PERFORM set_config('sfq.sleeper_session', 'on', false);
            FOREACH key IN ARRAY keys LOOP
                CONTINUE WHEN position(',' || key || ',' IN held) > 0;
                PERFORM pg_advisory_lock_shared(hashtext('sfq_asleep'), key);
                held := held || ',' || key || ',';
            END LOOP;
            PERFORM set_config('sfq.asleep_keys', held, false);
        END IF;
        BEGIN
            -- At the barrier only: a fetch may also wait on a row (a counter's, while a fold's transaction
            -- goes on), and a lock timeout there would stop the worker.
            PERFORM set_config('lock_timeout', '1s', true);
            FOREACH key IN ARRAY keys LOOP
                PERFORM pg_advisory_xact_lock(hashtext('sfq_barrier'), key);
            END LOOP;
            PERFORM set_config('lock_timeout', usual_timeout, true);
        EXCEPTION WHEN lock_not_available THEN
            PERFORM sfq_wake_up(keys, worker);
            asleep := NULL;
            RETURN;
        END;
        job := procrastinate_fetch_job_v2(queues, worker);
        IF job.id IS NULL THEN
            IF position(',' || worker || ',' IN sleepers) = 0 THEN
                PERFORM pg_advisory_lock(hashtext('sfq_sleeper'), (worker % 2147483648)::integer);
                PERFORM set_config('sfq.sleeper_workers', sleepers || ',' || worker || ',', false);
            END IF;
            BEGIN
                PERFORM set_config('lock_timeout', '1s', true);  -- as at the barrier
                INSERT INTO sfq_sleepers (worker_id, queue_name, channel)
                SELECT worker, q, channel FROM unnest(names) AS q
                    ON CONFLICT (worker_id, queue_name) DO UPDATE SET channel = EXCLUDED.channel
                 WHERE sfq_sleepers.channel IS DISTINCT FROM EXCLUDED.channel;  -- an old row of its id
                PERFORM set_config('lock_timeout', usual_timeout, true);
            EXCEPTION WHEN lock_not_available THEN  -- an enqueue taking its old row has not committed yet
                PERFORM sfq_wake_up(keys, worker);
                asleep := NULL;
                RETURN;
            END;
            asleep := true;
            RETURN;
        END IF;
    END IF;
    PERFORM sfq_wake_up(keys, worker);
    asleep := false;
END;
$$;

-- A worker registered asleep on these queues' keys no longer is (sfq_fetch_job): its "asleep" and
-- "sleeper" locks go, and its rows (but one an enqueue is taking: that enqueue deletes it).
CREATE OR REPLACE FUNCTION sfq_wake_up(keys integer[], worker bigint) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    held text := coalesce(current_setting('sfq.asleep_keys', true), '');
    sleepers text := coalesce(current_setting('sfq.sleeper_workers', true), '');
    key integer;
BEGIN
    FOREACH key IN ARRAY keys LOOP
        CONTINUE WHEN position(',' || key || ',' IN held) = 0;
        PERFORM pg_advisory_unlock_shared(hashtext('sfq_asleep'), key);
        held := replace(held, ',' || key || ',', '');
    END LOOP;
    PERFORM set_config('sfq.asleep_keys', held, false);
    IF position(',' || worker || ',' IN sleepers) > 0 THEN
        PERFORM pg_advisory_unlock(hashtext('sfq_sleeper'), (worker % 2147483648)::integer);
        PERFORM set_config('sfq.sleeper_workers', replace(sleepers, ',' || worker || ',', ''), false);
        DELETE FROM sfq_sleepers s WHERE (s.worker_id, s.queue_name) IN (
            SELECT t.worker_id, t.queue_name FROM sfq_sleepers t WHERE t.worker_id = worker FOR UPDATE SKIP LOCKED);
    END IF;
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- Rescue: every worker daemon calls sfq_rescue_stalled_jobs and sfq_rescue_stalled_side_jobs every few
-- seconds (no cron to install). A job in `doing` whose worker's heartbeat is older than `stale_after_s`
-- (or whose worker row is gone) is closed as failed and its model (forecast, backtest) gets a new job.

-- Give a model whose job is gone a new one, or fail it when its workers were lost too often.
CREATE OR REPLACE FUNCTION sfq_hand_on(model bigint, old_job bigint, max_attempts integer) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    lost integer;
    new_job bigint;
    job_priority integer;
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
    new_job := sfq_new_job_id();  -- recorded, then deferred
    UPDATE models m SET status = 'queued', job_id = new_job,
           error = format('job %s lost its worker; handed on to job %s', old_job, new_job)
     WHERE m.id = model
    RETURNING m.priority INTO job_priority;
    PERFORM sfq_defer_training(ARRAY[model], ARRAY[job_priority]);
    RETURN 'rescued';
END;
$$;

CREATE OR REPLACE FUNCTION sfq_rescue_stalled_jobs(stale_after_s double precision, max_attempts integer,
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

-- Jobs still `doing` though what they ran ended over `stale_after_s` ago (a model, a forecast, a backtest),
-- their worker alive, so not rescued: Procrastinate's worker could not record the job's end (the database
-- restarted between the result's write and the job's end: found by test_chaos) and will not try again. Each
-- is closed as its object ended (completed: succeeded; failed or cancelled: failed); nothing runs again.
CREATE OR REPLACE FUNCTION sfq_close_ended_jobs(stale_after_s double precision)
    RETURNS TABLE (task text, object_id bigint, job_id bigint, ended text)
    LANGUAGE sql AS $$
    WITH ended AS (
        SELECT j.id, j.task_name::text AS task, o.id AS object_id, o.status AS ended
          FROM procrastinate_jobs j
          JOIN LATERAL (
                SELECT m.id, m.status::text, m.finished_at FROM models m
                 WHERE j.task_name = 'train_model' AND m.id = (j.args->>'model_id')::bigint
                UNION ALL
                SELECT f.id, f.status, f.finished_at FROM model_forecasts f
                 WHERE j.task_name = 'predict_model' AND f.id = (j.args->>'forecast_id')::bigint
                UNION ALL
                SELECT b.id, b.status, b.finished_at FROM simulation_history b
                 WHERE j.task_name = 'simulate_model' AND b.id = (j.args->>'simulation_id')::bigint
               ) o ON true
         WHERE j.status = 'doing' AND o.status NOT IN ('queued', 'running')
           AND o.finished_at < now() - make_interval(secs => stale_after_s)
    )
    UPDATE procrastinate_jobs j
       SET status = (CASE WHEN e.ended = 'completed' THEN 'succeeded' ELSE 'failed' END)
                    ::procrastinate_job_status
      FROM ended e
     WHERE j.id = e.id AND j.status = 'doing'
    RETURNING e.task, e.object_id, j.id, e.ended;
$$;

-- Forecasts and backtests whose worker died: their job is closed and a new one deferred. Both are
-- written once whatever happens (their writes require `status = 'queued'`), so running again is safe.
CREATE OR REPLACE FUNCTION sfq_rescue_stalled_side_jobs(stale_after_s double precision, own_worker bigint DEFAULT NULL)
    RETURNS TABLE (task text, object_id bigint, old_job_id bigint, new_job_id bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    stalled record;
BEGIN
    FOR stalled IN
        SELECT j.id, j.task_name, j.args
          FROM procrastinate_jobs j
          LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
         WHERE j.status = 'doing' AND j.task_name IN ('predict_model', 'simulate_model', 'advance_study')
           AND (own_worker IS NULL OR j.worker_id IS DISTINCT FROM own_worker)
           AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => stale_after_s))
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        UPDATE procrastinate_jobs SET status = 'failed' WHERE id = stalled.id;
        task := stalled.task_name;
        old_job_id := stalled.id;
        new_job_id := NULL;
        IF stalled.task_name = 'predict_model' THEN
            object_id := (stalled.args->>'forecast_id')::bigint;
            IF EXISTS (SELECT 1 FROM model_forecasts f
                        WHERE f.id = object_id AND f.status = 'queued' AND f.job_id = stalled.id) THEN
                new_job_id := sfq_defer_forecast(object_id);
            END IF;
        ELSIF stalled.task_name = 'advance_study' THEN
            object_id := (stalled.args->>'study_id')::bigint;
            IF EXISTS (SELECT 1 FROM studies s WHERE s.id = object_id) THEN
                new_job_id := sfq_defer_study_advance(object_id);
            END IF;
        ELSE
            object_id := (stalled.args->>'simulation_id')::bigint;
            IF EXISTS (SELECT 1 FROM simulation_history s
                        WHERE s.id = object_id AND s.status = 'queued' AND s.job_id = stalled.id) THEN
                new_job_id := sfq_defer_simulation(object_id);
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- A worker daemon's beat, every SFQ_HEARTBEAT_S (workers/daemon/runtime.py): one statement. Who it is, for
-- `sfq status`; when no daemon has run it for `round_every_s`, the fleet's round; and, last, the heartbeats
-- of its Procrastinate workers (`workers`, the training worker's first). The round: the jobs of workers
-- silent for `stale_after_s` handed on, the weekly and cron retrain policies that are due retrained,
-- workers gone for a day forgotten, and a sleeping worker woken for each due job that none was woken for.
-- The daemon whose beat comes first after the period runs the round (a concurrent one skips the locked
-- row): every daemon ran it on every beat before (0027), 4 transactions a beat each, which grew with the
-- fleet and made most of an idle fleet's database time at 500 daemons (issue 15). The round's rows, for
-- the daemon's log: `kind` 'rescued' (sfq_rescue_stalled_jobs' row), 'side rescued'
-- (sfq_rescue_stalled_side_jobs'), 'closed' (sfq_close_ended_jobs'), 'retrained' (a strategy_retrains
-- row), 'woken' (how many workers), 'vacuum' (the beats' tables' dead rows, past the threshold below) or
-- 'analyze' (procrastinate_jobs' rows, past the threshold below, and the rows its statistics say), as JSON.
-- The heartbeats are written last, at the clock, not at the statement's start: a round can take a while (it
-- waits for a model row a result's write holds, or rescues or retrains many), and a heartbeat stamped at
-- its start was as old as the round when it committed, so the next round presumed the daemon that ran the
-- slow one dead and handed its running job on (tests/test_resilience.py). While a daemon's round goes on,
-- no other daemon runs one (the locked row), and its workers' rows are locked from the round's start: a
-- worker that starts meanwhile (Procrastinate's prune of stalled workers, at every Worker.run) waits for
-- them, then finds them fresh, rather than deleting the rows of a daemon whose round is long.
CREATE OR REPLACE FUNCTION sfq_beat(workers bigint[], host text, pid integer, instance integer,
                                    stale_after_s double precision, max_attempts integer,
                                    round_every_s double precision)
    RETURNS TABLE (kind text, what jsonb)
    LANGUAGE plpgsql AS $$
DECLARE
    due_queue varchar;
    due_job bigint;
    woken boolean;
    woke integer := 0;
    deferred_before bigint;  -- the last round's jobs_before
BEGIN
    INSERT INTO sfq_workers (worker_id, host, pid, instance)
    VALUES (workers[1], sfq_beat.host, sfq_beat.pid, sfq_beat.instance)
        ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), host = excluded.host, pid = excluded.pid;
    -- The fleet's size as the last round counted it: each daemon paces its idle polls by it (SFQ_POLL_GAP_S).
    RETURN QUERY SELECT 'fleet'::text, jsonb_build_object('daemons', r.daemons) FROM sfq_fleet_round r;
    SELECT r.jobs_before INTO deferred_before FROM sfq_fleet_round r
     WHERE r.ran_at < now() - make_interval(secs => round_every_s) FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- Another daemon ran the round within the period, or runs it now. A beat alone need not wait for
        -- its WAL to reach the disk: a server crash loses at most the last beats, which the next ones
        -- write again (most of an idle fleet's commits: issue 15 part 4). A round's commit is durable.
        PERFORM set_config('synchronous_commit', 'off', true);
    ELSE
        UPDATE sfq_fleet_round
           SET ran_at = now(),
               daemons = (SELECT count(*) FROM sfq_workers w
                           WHERE w.last_seen >= now() - make_interval(secs => stale_after_s)),
               jobs_before = (SELECT coalesce(max(j.id), 0) FROM procrastinate_jobs j);
        PERFORM FROM procrastinate_workers WHERE id = ANY(workers) ORDER BY id FOR NO KEY UPDATE;
        DELETE FROM sfq_workers WHERE last_seen < now() - interval '1 day';
        -- Never the caller's own jobs: its heartbeats are written at the end of this beat, so during its
        -- round they are as old as its last beat.
        RETURN QUERY SELECT 'rescued'::text, to_jsonb(r)
                       FROM sfq_rescue_stalled_jobs(stale_after_s, max_attempts, workers[1]) r;
        RETURN QUERY SELECT 'side rescued'::text, to_jsonb(r)
                       FROM sfq_rescue_stalled_side_jobs(stale_after_s, workers[2]) r;
        RETURN QUERY SELECT 'closed'::text, to_jsonb(r) FROM sfq_close_ended_jobs(stale_after_s) r;
        RETURN QUERY SELECT 'retrained'::text, to_jsonb(r) FROM sfq_retrain_due() r;
        -- Jobs due that no sleeper was woken for: a retry's or a scheduled job's time came (nothing is
        -- inserted then), or a wake reached a worker whose fetch had just taken another job (a job that
        -- was there at the last round, a period ago or more, and still waits: its id is at most the last
        -- round's jobs_before; a younger one's own wake may be on its way, and a second sleeper woken for
        -- it found nothing: test_worker, 2026-12-03). A sleeper each, as many as sleep on the queue; so a
        -- listening worker's poll (SFQ_POLL_INTERVAL_S) is only the last net. A job whose lock a running
        -- job holds waits for it (as procrastinate_fetch_job_v2 does).
        FOR due_queue IN SELECT DISTINCT s.queue_name FROM sfq_sleepers s LOOP
            FOR due_job IN SELECT j.id FROM procrastinate_jobs j
                            WHERE j.queue_name = due_queue AND j.status = 'todo'
                              AND (j.scheduled_at <= now()
                                   OR j.scheduled_at IS NULL AND j.id <= deferred_before)
                              AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs d
                                               WHERE d.lock = j.lock AND d.status = 'doing')
                            ORDER BY j.priority DESC, j.id
                            LIMIT (SELECT count(*) FROM sfq_sleepers s WHERE s.queue_name = due_queue) LOOP
                woken := sfq_wake_one_sleeper(due_queue, due_job);
                IF woken IS NULL THEN
                    PERFORM sfq_wake_every_worker(due_queue, due_job);
                END IF;
                EXIT WHEN woken IS NOT TRUE;
                woke := woke + 1;
            END LOOP;
        END LOOP;
        IF woke > 0 THEN
            RETURN QUERY SELECT 'woken'::text, jsonb_build_object('workers', woke);
        END IF;
        -- The beats' own tables: every beat leaves dead row versions in them (two procrastinate_workers
        -- rows a daemon, whose indexed last_heartbeat rules out HOT updates, so only a VACUUM removes them
        -- and their index entries; sfq_workers' and sfq_fleet_round's are HOT, pruned as pages are read),
        -- and sleepers come and go. An idle fleet prunes no job, so no VACUUM follows a prune; on a server
        -- with autovacuum off (or behind) they would pile up, 100 a second at 500 daemons. Past the
        -- threshold, the daemon that ran the round VACUUMs them (workers/daemon/runtime.py: not possible in
        -- here). The threshold, 1,000 dead rows beyond the live ones, is about an hour of one daemon's beats
        -- every 10 s, 35 s of 500's.
        RETURN QUERY SELECT 'vacuum'::text, jsonb_build_object('dead_rows', sum(t.n_dead_tup))
          FROM pg_stat_user_tables t
         WHERE t.relid IN ('procrastinate_workers'::regclass, 'sfq_workers'::regclass,
                           'sfq_sleepers'::regclass, 'sfq_fleet_round'::regclass)
        HAVING sum(t.n_dead_tup) > 1000 + sum(t.n_live_tup);
        -- The jobs' statistics. A session keeps the plans it made for procrastinate_jobs as its statistics
        -- then said it was, the check of each new event's key to its job among them: made while they said
        -- the table was nearly empty, that check scans every job, for each job deferred or moved, until
        -- something analyzes the table again (docs/BENCHMARKS.md, "Why HTTP at 0 models was slower").
        -- Autovacuum analyzes it once a tenth of it changed; off or behind, once it holds over twice the
        -- rows its statistics say, plus 1,000, the daemon that ran the round analyzes it (a few times as
        -- the queue grows tenfold; a table that shrank is left alone: an estimate too high never turned
        -- a lookup by key into a scan).
        RETURN QUERY SELECT 'analyze'::text,
                            jsonb_build_object('rows', t.n_live_tup, 'estimated', greatest(c.reltuples, 0)::bigint)
          FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
         WHERE t.relid = 'procrastinate_jobs'::regclass
           AND t.n_live_tup > 1000 + 2 * greatest(c.reltuples, 0);
    END IF;
    UPDATE procrastinate_workers SET last_heartbeat = clock_timestamp() WHERE id = ANY(workers);
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- Retention.

-- Up to `batch` finished queue jobs (and their events) whose last event is older than the retention, in
-- one transaction; models and results are untouched. Returns how many went: the caller calls again until
-- fewer than `batch` go. Its cost follows what is to be pruned, not the table: the events older than the
-- retention are a prefix of procrastinate_events in id order (ids and times rise together), found by
-- reading the primary key up to the first event inside the retention (`boundary`); a job goes when all its
-- events are before it. One pruner at a time (others return 0 at once); a job a periodic task's record
-- still points at stays.
CREATE OR REPLACE FUNCTION sfq_prune_finished_jobs(older_than interval, batch integer DEFAULT 10000)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    boundary bigint;
    pruned integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('sfq_prune_finished_jobs')) THEN
        RETURN 0;
    END IF;
    SELECT e.id INTO boundary FROM procrastinate_events e WHERE e.at >= now() - older_than ORDER BY e.id LIMIT 1;
    boundary := coalesce(boundary, 9223372036854775807);
    WITH victims AS (
        SELECT j.id FROM procrastinate_jobs j
         WHERE j.id IN (SELECT e.job_id FROM procrastinate_events e WHERE e.id < boundary)
           AND j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
           AND NOT EXISTS (SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id AND e.id >= boundary)
           AND NOT EXISTS (SELECT 1 FROM procrastinate_periodic_defers p WHERE p.job_id = j.id)
         ORDER BY j.id
         LIMIT batch
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM procrastinate_jobs j USING victims v WHERE j.id = v.id RETURNING 1
    )
    SELECT count(*)::integer INTO pruned FROM gone;
    RETURN pruned;
END;
$$;
