-- sfq/simulations: backtests of a trained model's out-of-sample predictions, and its lockbox evaluation
-- (workers/daemon/backtests.py); every trained model gets the default one (long_short, default parameters)
-- in its result's transaction. Their jobs: queue.sql's sfq_defer_simulation.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- A backtest of a completed model with a strategy and its parameters (validated and completed with defaults
-- against sfq_strategies), on its out-of-sample predictions or (lockbox) on its lockbox. The same request
-- again returns the same simulation (a failed one, or one whose job ended without answering, is tried
-- again); a backtest computed under the legacy convention (before migration 0010) is not the same request:
-- a new one trades the label.
CREATE OR REPLACE FUNCTION sfq_queue_simulation(model bigint, strategy text, params jsonb, priority integer,
                                                lockbox boolean)
    RETURNS simulation_history
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    m models := sfq_model(model);
    contracts jsonb;
    s simulation_history;
BEGIN
    SELECT st.parameters INTO contracts FROM sfq_strategies st WHERE st.name = strategy;
    IF contracts IS NULL THEN
        PERFORM sfq_reject('strategy', format('%L is not one of %s', strategy,
                           (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_strategies)));
    END IF;
    IF jsonb_typeof(coalesce(params, '{}')) <> 'object' THEN
        PERFORM sfq_reject('params', format('must be a JSON object, got %s', params));
    END IF;
    params := sfq_canonical_params('params', format('strategy %s', strategy), coalesce(params, '{}'), contracts);
    IF m.status <> 'completed' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s is %s: only a completed model can be backtested', model, m.status);
    END IF;
    INSERT INTO simulation_history (model_id, strategy, params, status, lockbox)
    VALUES (model, strategy, params, 'queued', lockbox)
    ON CONFLICT (model_id, strategy, params, lockbox) WHERE imported_from IS NULL AND convention = 'label'
    DO NOTHING
    RETURNING * INTO s;
    IF FOUND THEN
        PERFORM sfq_defer_simulation(s.id, priority);
    ELSE
        SELECT * INTO s FROM simulation_history h
         WHERE h.model_id = model AND h.strategy = sfq_queue_simulation.strategy
           AND h.params = sfq_queue_simulation.params AND h.lockbox = sfq_queue_simulation.lockbox
           AND h.imported_from IS NULL AND h.convention = 'label'
           FOR UPDATE;
        IF s.status = 'failed' OR (s.status = 'queued' AND NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs j WHERE j.id = s.job_id AND j.status IN ('todo', 'doing'))) THEN
            PERFORM sfq_defer_simulation(s.id, priority);
        END IF;
    END IF;
    SELECT * INTO s FROM simulation_history WHERE id = s.id;
    RETURN s;
END;
$$;

-- POST /simulate: a backtest of a completed model's out-of-sample predictions.
CREATE OR REPLACE FUNCTION sfq_request_simulation(model bigint, strategy text DEFAULT 'long_short',
                                                  params jsonb DEFAULT '{}', priority integer DEFAULT 0)
    RETURNS simulation_history
    LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT * FROM sfq_queue_simulation(model, strategy, params, priority, false)
$$;

-- POST /models/{id}/lockbox: the model's one evaluation on its lockbox (its stored model's predictions
-- from lockbox_start to data_end, scored and backtested with the default strategy), computed once; every
-- request counts as a look (models.lockbox_looks), so a lockbox consulted to choose between models shows it.
CREATE OR REPLACE FUNCTION sfq_request_lockbox(model bigint) RETURNS simulation_history
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    m models := sfq_model(model);
BEGIN
    IF m.spec_extra->>'lockbox_start' IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s has no lockbox: its request set no lockbox_start', model);
    END IF;
    IF m.status = 'completed' THEN
        UPDATE models SET lockbox_looks = lockbox_looks + 1 WHERE id = model;
    END IF;
    RETURN sfq_queue_simulation(model, 'long_short', '{}', 0, true);
END;
$$;
