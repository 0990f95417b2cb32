-- sfq/models: a model's lifecycle (the attempt log kept by a trigger on models, the lookups the operations
-- share).
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- A model by id, optionally locked; no model: P0002 (the API's 404).
CREATE OR REPLACE FUNCTION sfq_model(model bigint, lock boolean DEFAULT false) RETURNS models
    LANGUAGE plpgsql AS $$
DECLARE
    m models;
BEGIN
    IF lock THEN
        SELECT * INTO m FROM models WHERE id = model FOR UPDATE;
    ELSE
        SELECT * INTO m FROM models WHERE id = model;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no model with id %s', model);
    END IF;
    RETURN m;
END;
$$;

-- The request that reproduces a model: its canonical fields (grids and their parameters as they were).
CREATE OR REPLACE FUNCTION sfq_model_request(m models) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'symbol', m.symbol, 'timeframe', m.timeframe, 'target_col', m.target_col,
        'target_transform', m.target_transform, 'horizon', m.horizon, 'algorithm', m.algorithm,
        'hyperparameters', m.hyperparameters, 'features', to_jsonb(m.features),
        'train_window', m.train_window, 'test_window', m.test_window, 'data_end', m.data_end,
        'cv_folds', m.cv_folds, 'cv_strategy', m.cv_strategy, 'context_symbols', to_jsonb(m.context_symbols),
        'alpha_grid', to_jsonb(m.alpha_grid), 'l1_ratio_grid', to_jsonb(m.l1_ratio_grid),
        'regime_configs', m.regime_configs, 'run', m.run, 'timeout_s', m.timeout_s,
        'parent_model_id', m.parent_model_id)
$$;

-- One row per attempt at training a model (model_attempts): opened when attempts grows, closed when
-- the model leaves `running`, whatever the path (worker, rescue, cancel).
CREATE OR REPLACE FUNCTION sfq_log_attempt() RETURNS trigger
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

CREATE OR REPLACE TRIGGER models_log_attempt AFTER UPDATE OF attempts, status ON models
    FOR EACH ROW EXECUTE FUNCTION sfq_log_attempt();
