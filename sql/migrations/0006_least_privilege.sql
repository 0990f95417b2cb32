-- sfq 0006: least privilege (docs/security.md; the roles themselves are sql/roles.sql, `sfq db roles`).
--
-- The operations other roles may perform run as the owner of sfq's objects (SECURITY DEFINER) with a
-- fixed search_path (sfq's schema, then pg_temp, so that a caller's objects never stand in for sfq's):
-- EXECUTE on one of them is the permission to perform it, and the caller needs no rights on the tables
-- it writes. What they call runs as the owner too and needs no grant.
--   - sfq_accept_training_request, the training_requests trigger: a plain INSERT INTO training_requests
--     creates the model and defers its job, which the inserting role may not do by itself.
--   - sfq_submit (the JSON way in: the same INSERT) and the API's operations: sfq_submit_batch,
--     sfq_retrain, sfq_evolve, sfq_cancel_model, sfq_request_forecast, sfq_request_simulation,
--     sfq_submit_sweep.
-- Replacing a function (CREATE OR REPLACE) resets SECURITY DEFINER and SET: a later migration that
-- replaces one of these must state both again (tests/test_roles.py checks that they are still set).
--
-- PostgreSQL lets PUBLIC execute every function; no sfq or Procrastinate function stays executable by
-- PUBLIC (a SECURITY DEFINER one would let any role act as the owner). The owner keeps them all;
-- sql/roles.sql grants each role what it calls.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'sfq_accept_training_request()',
        'sfq_submit(jsonb, text)',
        'sfq_submit_batch(jsonb, text)',
        'sfq_retrain(bigint, boolean, text)',
        'sfq_evolve(bigint, jsonb, text)',
        'sfq_cancel_model(bigint)',
        'sfq_request_forecast(bigint)',
        'sfq_request_simulation(bigint, text, jsonb, integer)',
        'sfq_submit_sweep(jsonb, jsonb, integer, text, integer)'
    ]::regprocedure[] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', fn,
                       (SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE p.oid = fn));
    END LOOP;
    FOR fn IN
        SELECT p.oid FROM pg_proc p
         WHERE p.pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'models'::regclass)
           AND p.proname ~ '^(sfq|procrastinate)_'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END;
$$;
