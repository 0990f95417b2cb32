-- sfq/simulations: backtests of a trained model's held-out predictions (workers/simulation.py); every
-- trained model gets the default one (long_short, default parameters) in its result's transaction. Their
-- jobs: queue.sql's sfq_defer_simulation.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- POST /simulate: a backtest of a completed model with a strategy and its parameters (validated and
-- completed with defaults against sfq_strategies). The same request again returns the same simulation
-- (a failed one, or one whose job ended without answering, is tried again); a backtest computed under the
-- legacy convention (before migration 0010) is not the same request: a new one trades the label.
CREATE OR REPLACE FUNCTION sfq_request_simulation(model bigint, strategy text DEFAULT 'long_short',
                                                  params jsonb DEFAULT '{}', priority integer DEFAULT 0)
    RETURNS simulation_history
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
    INSERT INTO simulation_history (model_id, strategy, params, status)
    VALUES (model, strategy, params, 'queued')
    ON CONFLICT (model_id, strategy, params) WHERE imported_from IS NULL AND convention = 'label' DO NOTHING
    RETURNING * INTO s;
    IF FOUND THEN
        PERFORM sfq_defer_simulation(s.id, priority);
    ELSE
        SELECT * INTO s FROM simulation_history h
         WHERE h.model_id = model AND h.strategy = sfq_request_simulation.strategy
           AND h.params = sfq_request_simulation.params AND h.imported_from IS NULL AND h.convention = 'label'
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
