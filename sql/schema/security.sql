-- sfq/security: function-level privileges (docs/security.md). The last of the repeatable files, so that it
-- sees every function the others (and Procrastinate's schema and migrations) defined.
--
-- The operations other roles may perform run as the owner of sfq's objects: SECURITY DEFINER with a fixed
-- search_path (sfq's schema, then pg_temp, so that a caller's objects never stand in for sfq's), stated in
-- each one's own definition. EXECUTE on one of them is the permission to perform it, and the caller needs
-- no rights on the tables it writes; what they call runs as the owner too and needs no grant:
--   - sfq_accept_training_request and sfq_defer_training_requests, the training_requests triggers
--     (requests.sql): a plain INSERT INTO training_requests creates the model and defers its job, which the
--     inserting role may not do by itself;
--   - sfq_submit (requests.sql: the JSON way in, the same INSERT), sfq_submit_many (the same for many, the
--     API's gathered POST /train) and the API's operations: sfq_submit_batch,
--     sfq_retrain, sfq_evolve, sfq_cancel_model (operations.sql), sfq_request_forecast (forecasts.sql),
--     sfq_request_simulation, sfq_request_lockbox (simulations.sql), sfq_submit_sweep (sweeps.sql),
--     sfq_create_study and sfq_stop_study (studies.sql), and the workers' sfq_submit_trial (a study's trial);
--   - sfq_study_trial_ended, the models trigger that defers a study's advance when one of its trials ends;
--   - sfq_move_alias (strategies.sql), an alias's move, and sfq_bars_arrived, the bars trigger that defers
--     the aliased models' forecasts: a plain INSERT INTO bars does it whoever inserts (and the retrains
--     of the policies that count bars);
--   - sfq_set_retrain_policy, sfq_retrain_due (retrains.sql), and sfq_retrain_ended, the models trigger that
--     decides a retrain (champion/challenger) in the transaction that records its model's end.
--   - sfq_wake_sleepers (queue.sql), the deferred procrastinate_jobs trigger that wakes a sleeping worker
--     a job: it runs at commit as whoever enqueued, who may not read or delete sfq_sleepers' rows;
--   - sfq_prune_requests (requests.sql), the workers' prune of accepted requests past the retention: a
--     worker may not delete requests otherwise.
-- tests/test_roles.py checks that exactly these are SECURITY DEFINER, with that search_path.
--
-- PostgreSQL lets PUBLIC execute every new function; no sfq or Procrastinate function stays executable by
-- PUBLIC (a SECURITY DEFINER one would let any role act as the owner). The owner keeps them all;
-- sql/roles.sql (`sfq db roles`) grants each role what it calls.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid FROM pg_proc p
         WHERE p.pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'models'::regclass)
           AND (p.proname ~ '^(sfq|procrastinate)_' OR p.proname = 'spec')  -- spec(models): models.sql
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END;
$$;
