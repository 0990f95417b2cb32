-- sfq's database roles (`sfq db roles`, docs/security.md): run by the owner of sfq's objects with
-- CREATEROLE, or by a superuser, in one transaction. Idempotent.
--
-- Three NOLOGIN group roles; a service logs in as a role of its own that is a member of one of them:
--     CREATE ROLE billing LOGIN PASSWORD '...' IN ROLE sfq_submitter;
--   sfq_submitter  other services: submit training requests, read the models' status
--   sfq_worker     the worker daemons: their jobs, results, rescue and pruning
--   sfq_api        the HTTP API: what its read endpoints show, and every change through the operations'
--                  functions (SECURITY DEFINER, sql/schema/security.sql)
-- None of them may DELETE from, TRUNCATE, ALTER or DROP an sfq table, or create one.
-- Everything the three held in sfq's schema is revoked first, so that this file is the whole truth. The
-- grants name tables, columns and functions: run `sfq db roles` again after every `sfq db upgrade`.

SELECT pg_advisory_xact_lock(hashtext('sfq roles'));

DO $$
DECLARE
    sfq_schema text;
    group_role text;
BEGIN
    IF to_regclass('training_requests') IS NULL OR to_regclass('procrastinate_jobs') IS NULL THEN
        RAISE EXCEPTION 'the database has no sfq schema yet: run `sfq db upgrade` first';
    END IF;
    SELECT n.nspname INTO sfq_schema
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'training_requests'::regclass;
    FOREACH group_role IN ARRAY ARRAY['sfq_submitter', 'sfq_worker', 'sfq_api'] LOOP
        -- Roles belong to the cluster, privileges to each database: another sfq database may have made it.
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', group_role);
            EXCEPTION WHEN duplicate_object THEN  -- just now, from another database
            END;
        ELSIF (SELECT rolcanlogin FROM pg_roles WHERE rolname = group_role) THEN
            EXECUTE format('ALTER ROLE %I NOLOGIN', group_role);
        END IF;
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', sfq_schema, group_role);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', sfq_schema, group_role);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', sfq_schema, group_role);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', sfq_schema, group_role);
    END LOOP;
    -- No sfq or Procrastinate function is executable by PUBLIC: sql/schema/security.sql, applied by every
    -- `sfq db upgrade` that changes anything, sees to it.
    -- A submitter sets the request's fields; not its id (OVERRIDING SYSTEM VALUE could take the ids of
    -- requests to come), received_at or via, nor what the trigger fills in.
    EXECUTE format('GRANT INSERT (%s) ON training_requests TO sfq_submitter',
                   (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM sfq_request_fields()));
END;
$$;

-- The registries: which algorithms, features, regimes and strategies a request may name.
GRANT SELECT ON sfq_algorithms, sfq_features, sfq_regimes, sfq_strategies TO sfq_submitter, sfq_api;

-- sfq_submitter: INSERT INTO training_requests ... RETURNING model_id, fingerprint, deduplicated, id (or the
-- same from JSON with sfq_submit), then the status of a model, without its spec, file or results rows.
GRANT SELECT (id, model_id, fingerprint, deduplicated) ON training_requests TO sfq_submitter;
GRANT SELECT (id, status, fingerprint, error, metrics, submitted_at, started_at, finished_at)
    ON models TO sfq_submitter;
GRANT EXECUTE ON FUNCTION sfq_submit TO sfq_submitter;
-- Studies: created and stopped through their functions; their progress readable.
GRANT SELECT ON studies, study_trials TO sfq_submitter;
GRANT EXECUTE ON FUNCTION sfq_create_study, sfq_stop_study TO sfq_submitter;
-- ... and the strategies' registry: read it, and move any alias but production (sfq_move_alias refuses that).
GRANT SELECT ON strategies, strategy_aliases, strategy_alias_history TO sfq_submitter;
GRANT EXECUTE ON FUNCTION sfq_move_alias TO sfq_submitter;
-- ... their retrain policies and decisions: read them, and set any alias's policy but production's.
GRANT SELECT ON retrain_policies, strategy_retrains TO sfq_submitter;
GRANT EXECUTE ON FUNCTION sfq_set_retrain_policy TO sfq_submitter;

-- sfq_worker: its queries in sql/queries.sql (start, load, progress, complete, fail, requeue, forecasts,
-- backtests, beat, rescue, prune) and Procrastinate's worker (fetch, finish, retry, register,
-- heartbeat, prune stalled workers; its triggers write procrastinate_events as the worker).
GRANT SELECT ON models, bars, features_log, model_predictions, model_prediction_series, model_artifacts,
                model_attempts, model_forecasts, simulation_history, symbol_calendars, sfq_workers,
                model_live_records, sfq_strategies TO sfq_worker;
-- The default backtest's parameters, which a live record's decay flag compares with (default_backtest).
GRANT EXECUTE ON FUNCTION sfq_canonical_params, sfq_canonical_param, sfq_rule_matches, sfq_reject TO sfq_worker;
GRANT UPDATE (status, started_at, finished_at, error, attempts, worker_host, worker_pid, metrics, fold_metrics,
              timings, progress, job_id) ON models TO sfq_worker;
GRANT INSERT ON model_features, model_predictions, model_prediction_series, model_artifacts TO sfq_worker;
GRANT SELECT, INSERT ON prediction_axes TO sfq_worker;  -- predictions' shared bars and actual values (0020)
-- Model files (0020): a new blob or the same bytes' row (insert_blob locks it with an UPDATE), its chunks,
-- and an evicted file's blob linked back once rebuilt.
GRANT SELECT, INSERT, UPDATE (size) ON blobs TO sfq_worker;
GRANT SELECT, INSERT ON blob_chunks TO sfq_worker;
GRANT UPDATE (blob, evicted_at) ON model_artifacts TO sfq_worker;
GRANT INSERT, UPDATE ON model_attempts TO sfq_worker;  -- the attempt log (trigger on models, rescue)
-- The counters (sql/schema/counts.sql: triggers on models and procrastinate_jobs, run as the writer).
-- A writer adds to its changes and now and then folds every backend's into the totals (0021).
GRANT SELECT ON sfq_model_counts, sfq_training_durations, sfq_job_counts TO sfq_worker;
GRANT SELECT, INSERT, UPDATE ON sfq_model_count_totals, sfq_training_duration_totals, sfq_job_count_totals
    TO sfq_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON sfq_model_count_changes, sfq_training_duration_changes, sfq_job_count_changes
    TO sfq_worker;
GRANT EXECUTE ON FUNCTION sfq_add_model_counts, sfq_duration_bucket, sfq_duration_bounds, sfq_training_seconds,
    sfq_fold_counts, sfq_fold_counts_lock, sfq_fold_counts_now_and_then
    TO sfq_worker;
GRANT UPDATE (status, finished_at, prediction, reference_close, predicted_price, error, job_id)
    ON model_forecasts TO sfq_worker;
GRANT UPDATE (status, finished_at, error, metrics, equity_curve, period_start, period_end, job_id)
    ON simulation_history TO sfq_worker;
GRANT INSERT, UPDATE, DELETE ON sfq_workers TO sfq_worker;
-- A listening worker's rows while it sleeps (sfq_fetch_job registers it, sfq_wake_up lets them go, 0028).
GRANT SELECT, INSERT, UPDATE, DELETE ON sfq_sleepers TO sfq_worker;
GRANT SELECT, UPDATE ON sfq_fleet_round TO sfq_worker;  -- when the fleet's round last ran (sfq_beat)
-- Studies: a worker advances them (workers/daemon/studies.py): Optuna's journal, the trials it asks for
-- (each a training request of a running study, sfq_submit_trial: a worker submits nothing else) and the
-- study's end.
GRANT SELECT ON studies, study_trials, study_journal TO sfq_worker;
GRANT UPDATE (state, reason, finished_at, journal_length) ON studies TO sfq_worker;
GRANT INSERT, UPDATE ON study_trials TO sfq_worker;
GRANT INSERT ON study_journal TO sfq_worker;
GRANT INSERT, UPDATE ON model_live_records TO sfq_worker;  -- a model's live record, after each forecast
GRANT SELECT, INSERT, UPDATE, DELETE ON procrastinate_jobs, procrastinate_workers TO sfq_worker;
GRANT SELECT, INSERT ON procrastinate_events TO sfq_worker;
GRANT SELECT, UPDATE ON procrastinate_periodic_defers TO sfq_worker;  -- a pruned job is unlinked from it
GRANT USAGE ON SEQUENCE procrastinate_jobs_id_seq, procrastinate_events_id_seq TO sfq_worker;
GRANT EXECUTE ON FUNCTION
    procrastinate_fetch_job_v2, sfq_fetch_job, sfq_wake_up, procrastinate_finish_job_v1, procrastinate_retry_job_v2,
    procrastinate_register_worker_v1, procrastinate_unregister_worker_v1, procrastinate_update_heartbeat_v1,
    procrastinate_prune_stalled_workers_v1, procrastinate_defer_jobs_v1,
    sfq_rescue_stalled_jobs, sfq_rescue_stalled_side_jobs, sfq_hand_on, sfq_defer_training, sfq_training_job,
    sfq_new_job_id,  -- a handed-on model records its new job before it is deferred
    sfq_close_ended_jobs,  -- the round's close of a job left running after its model, forecast or backtest
    sfq_defer_forecast, sfq_defer_simulation, sfq_prune_finished_jobs, sfq_prune_requests,
    sfq_request_simulation,  -- a completed model's default backtest
    sfq_submit_trial, sfq_defer_study_advance,  -- a study's trials, and the rescue of its advance
    sfq_retrain_due,  -- the weekly and cron retrain policies that are due (the fleet's round)
    sfq_beat,  -- a daemon's heartbeat, and the fleet's round when it is due
    sfq_wake_one_sleeper, sfq_wake_every_worker  -- the round's wake for a due job none was woken for
    TO sfq_worker;

-- sfq_api: what the read endpoints and GET /metrics show; changes only through the operations.
GRANT SELECT ON models, features_log, model_predictions, model_prediction_series, model_artifacts,
                model_forecasts, simulation_history, sweeps, sweep_models, sfq_workers, procrastinate_jobs,
                procrastinate_workers, studies, study_trials, model_attempts, strategies, strategy_aliases,
                strategy_alias_history, model_live_records, retrain_policies, strategy_retrains
    TO sfq_api;
GRANT SELECT ON sfq_model_counts, sfq_training_durations, sfq_job_counts TO sfq_api;  -- counts (0017)
-- A model's spec, rebuilt from its row (`m.spec`, sql/schema/models.sql), for those who read every column.
GRANT EXECUTE ON FUNCTION spec(models), sfq_spec_of_columns, sfq_utc_text TO sfq_worker, sfq_api;
GRANT SELECT ON blobs, blob_chunks TO sfq_api;  -- GET /models/{id}/artifact streams a file's chunks
GRANT SELECT ON prediction_axes TO sfq_api;  -- GET /models/{id}/predictions (0020)
GRANT EXECUTE ON FUNCTION sfq_duration_bounds TO sfq_api;  -- GET /metrics' histogram
GRANT EXECUTE ON FUNCTION
    sfq_submit, sfq_submit_many, sfq_submit_batch, sfq_retrain, sfq_evolve, sfq_cancel_model,
    sfq_request_forecast, sfq_request_simulation, sfq_request_lockbox, sfq_submit_sweep, sfq_create_study, sfq_stop_study,
    sfq_move_alias, sfq_set_retrain_policy,
    sfq_retrain_objectives, sfq_study_objectives,  -- a retrain policy's objective's direction
    sfq_canonical_params, sfq_canonical_param, sfq_rule_matches, sfq_reject  -- a sweep's leaderboard
    TO sfq_api;
