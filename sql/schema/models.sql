-- sfq/models: a model's row, made in one place (sfq_new_model: a canonical request's model; sfq_insert_models:
-- the one INSERT INTO models, with deduplication on the live fingerprint), and its lifecycle (the attempt log
-- kept by a trigger on models, the lookups the operations share).
--
-- Every way a model is created goes through sfq_insert_models: a request (the training_requests trigger:
-- single requests, batches, retrains, evolutions), a sweep (sfq_submit_sweep, all its models in one call) and
-- the DuckDB import (sql/legacy.sql import_model, with its legacy status, error, metrics and origin).
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- What a model stores of its canonical spec beside its columns (models.spec_extra): the fields no column
-- holds (sfq_spec_column_fields), and spec_version when it is not the columns' 1. `hashed` is the spec
-- sfq_canonical_request built from the same columns (sfq_spec_of_columns, then those fields): spec() gives
-- it back byte for byte (tests/test_enqueue.py hashes the models of every way in back to their fingerprints).
CREATE OR REPLACE FUNCTION sfq_spec_extra(hashed jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN hashed->'spec_version' = '1' THEN hashed - sfq_spec_column_fields() - 'spec_version'
                ELSE hashed - sfq_spec_column_fields() END
$$;

-- A canonical request's model, not inserted yet: the request -> model mapping, written once. Every column
-- of models in its order (a row type is positional: tables.sql says so); a column a request does not set
-- takes the table's default. Inlined where it is called.
CREATE OR REPLACE FUNCTION sfq_new_model(r training_requests) RETURNS models
    LANGUAGE sql STABLE AS $$
    SELECT ROW(
        NULL,                    -- id: the INSERT's
        r.fingerprint, r.symbol, r.timeframe, r.target_col, r.target_transform, r.horizon,
        r.algorithm, r.hyperparameters, r.features, r.train_window, r.test_window, r.data_end, r.cv_folds,
        r.cv_strategy, r.context_symbols, r.alpha_grid, r.l1_ratio_grid, r.regime_configs, r.parent_model_id,
        'queued',                -- status
        NULL,                    -- error
        now(),                   -- submitted_at
        NULL, NULL, NULL, NULL,  -- started_at, finished_at, worker_host, worker_pid
        0,                       -- attempts
        NULL, NULL, NULL,        -- metrics, fold_metrics, timings
        r.timeout_s,
        NULL,                    -- job_id: sfq_insert_models'
        r.retrain_of, r.run,
        NULL,                    -- imported_from
        r.priority,
        NULL,                    -- progress
        0,                       -- lockbox_looks
        r.traceparent,
        sfq_spec_extra(r.spec)   -- spec_extra
    )::models
$$;

-- A model's spec, the one hashed into its fingerprint: its columns' fields (sfq_spec_of_columns, the
-- formula the request's spec was built with) and the others (spec_extra); or spec_extra whole, a spec kept
-- as it was hashed (it has `symbol`, which the other fields never have: a model made before 0031). Named
-- `spec` so that `m.spec` reads it as it read the column it replaced (0031: the spec repeated the columns,
-- about 770 B of a 2 KB row); an unqualified `spec` does not. PL/pgSQL, so that its expression's plan is
-- cached for the session: a SQL function with a SET clause is not inlined, and its body was planned again
-- at each execution of a query that reads it (0.14 ms of a one-model read, measured).
CREATE OR REPLACE FUNCTION spec(m models) RETURNS jsonb
    LANGUAGE plpgsql STABLE PARALLEL SAFE SET extra_float_digits = 1 AS $$  -- as sfq_canonical_request wrote them
BEGIN
    RETURN CASE WHEN m.spec_extra ? 'symbol' THEN m.spec_extra
                ELSE sfq_spec_of_columns(
                         m.symbol, m.timeframe, m.target_col, m.target_transform, m.horizon, m.algorithm,
                         m.hyperparameters, m.features, m.train_window, m.test_window, m.data_end, m.cv_folds,
                         m.cv_strategy, m.context_symbols, m.alpha_grid, m.l1_ratio_grid, m.regime_configs, m.run)
                     || m.spec_extra END;
END;
$$;

-- The one INSERT INTO models. Candidates are inserted in the order given, each unless a live model has its
-- fingerprint, whether it was there before or inserted by an earlier candidate of the same call (then
-- nothing: the caller finds that model). Returns the inserted models' ids, ascending: in the order of
-- their candidates. A failed or cancelled candidate (the DuckDB import's) is inserted even when a live
-- model has its fingerprint: the unique index is on live models only. A skipped candidate uses up an id
-- (as any INSERT ... ON CONFLICT DO NOTHING), so a caller with many passes distinct fingerprints.
-- A queued model is written with the id of its job to come (sfq_new_job_id), which the caller defers
-- (sfq_defer_training), so that the row is not updated for it; a skipped candidate's id goes unused.
-- PL/pgSQL, so that the INSERT's plan is cached (a SQL function's is planned again at every call from a
-- trigger); ids as an array, so that the trigger calls it as a plain expression (no result set to scan).
CREATE OR REPLACE FUNCTION sfq_insert_models(candidates models[]) RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    WITH inserted AS (
        INSERT INTO models (
            fingerprint, symbol, timeframe, target_col, target_transform, horizon, algorithm,
            hyperparameters, features, train_window, test_window, data_end, cv_folds, cv_strategy,
            context_symbols, alpha_grid, l1_ratio_grid, regime_configs, parent_model_id, status, error,
            submitted_at, started_at, finished_at, worker_host, worker_pid, attempts, metrics, fold_metrics,
            timings, timeout_s, job_id, retrain_of, run, imported_from, priority, progress, traceparent,
            spec_extra)
        SELECT c.fingerprint, c.symbol, c.timeframe, c.target_col, c.target_transform, c.horizon,
               c.algorithm, c.hyperparameters, c.features, c.train_window, c.test_window, c.data_end, c.cv_folds,
               c.cv_strategy, c.context_symbols, c.alpha_grid, c.l1_ratio_grid, c.regime_configs,
               c.parent_model_id, c.status, c.error, c.submitted_at, c.started_at, c.finished_at, c.worker_host,
               c.worker_pid, c.attempts, c.metrics, c.fold_metrics, c.timings, c.timeout_s,
               CASE WHEN c.status = 'queued' THEN sfq_new_job_id() END,
               c.retrain_of, c.run, c.imported_from, c.priority, c.progress, c.traceparent, c.spec_extra
          FROM unnest(candidates) AS c
        ON CONFLICT (fingerprint) WHERE status NOT IN ('failed', 'cancelled') DO NOTHING
        RETURNING id
    )
    SELECT array_agg(id) INTO ids FROM inserted;  -- RETURNING's order: the INSERT's
    RETURN coalesce(ids, '{}');
END;
$$;

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
        'parent_model_id', m.parent_model_id,
        -- A spec without it (spec_version 1) measured its label from the signal's close: lag 0.
        'execution_lag', coalesce((m.spec_extra->>'execution_lag')::integer, 0),
        'evaluation', coalesce(m.spec_extra->'evaluation', '{"kind": "holdout"}'),
        'lockbox_start', m.spec_extra->>'lockbox_start')
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

-- A model's feature importances a row per feature, as the table of that name held them before 0025 (the
-- API, the UI, plain SQL and the DuckDB import's counts read them so): model_features keeps one row of
-- arrays per model, rank = position.
CREATE OR REPLACE VIEW features_log AS
SELECT f.model_id, i.feature, i.importance, i.rank::integer AS rank, f.method
  FROM model_features f
 CROSS JOIN LATERAL unnest(f.features, f.importances) WITH ORDINALITY AS i(feature, importance, rank);
COMMENT ON VIEW features_log IS
    'Each model''s feature importances, a row per feature, rank 1 the most important (stored in model_features).';
