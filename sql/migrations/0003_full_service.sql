-- sfq 0003: every field of a spec trained for real, and the old service's operations.
--
-- - Validation and canonicalisation move into sfq_canonical_request(), callable without enqueueing
--   (the DuckDB import recomputes fingerprints with it); the training_requests trigger calls it.
-- - context_symbols, alpha_grid / l1_ratio_grid, regime_configs and the sliding and purged CV strategies
--   are accepted (their "not supported yet" refusals are gone).
-- - Retraining (retrain_of, run), evolution (sfq_evolve), batches, cancellation, live forecasts, and the
--   simulation_history table the DuckDB import fills (its simulations come with issue 4), and
--   priorities (not part of the fingerprint).

-- Regime kinds and their parameters, written by sql/registry.sql from workers/regimes.py.
CREATE TABLE sfq_regimes (
    name text PRIMARY KEY,
    description text NOT NULL,
    parameters jsonb NOT NULL  -- {param: {default, rules: [...], expects}}, as sfq_algorithms
);

ALTER TABLE models
    ADD COLUMN retrain_of bigint REFERENCES models (id),
    ADD COLUMN run integer NOT NULL DEFAULT 1,
    ADD COLUMN imported_from text;  -- 'duckdb:<file>#<legacy id>' for models moved from the old service
CREATE INDEX models_retrain_of ON models (retrain_of) WHERE retrain_of IS NOT NULL;

ALTER TABLE training_requests
    ADD COLUMN run integer DEFAULT 1,
    ADD COLUMN retrain_of bigint,
    ADD COLUMN spec jsonb;  -- the canonical spec that was hashed (filled in, like fingerprint)

-- Priorities: Procrastinate fetches higher priorities first. Not part of the fingerprint: a duplicate
-- keeps the priority it was queued with.
ALTER TABLE training_requests ADD COLUMN priority integer DEFAULT 0;
COMMENT ON COLUMN training_requests.priority IS
    'Queue priority, -100..100 (higher first); single requests 0, sweeps -10 by default. Not fingerprinted.';
ALTER TABLE models ADD COLUMN priority integer NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION sfq_defer_training(model bigint) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    job_ids bigint[];
BEGIN
    job_ids := procrastinate_defer_jobs_v1(ARRAY[ROW(
        'training', 'train_model', (SELECT priority FROM models WHERE id = model), 'model:' || model, NULL,
        jsonb_build_object('model_id', model), NULL
    )::procrastinate_job_to_defer_v1]);
    UPDATE models SET job_id = job_ids[1] WHERE id = model;
    RETURN job_ids[1];
END;
$$;

COMMENT ON COLUMN training_requests.run IS
    'Run number of an otherwise identical spec: 1 by default; a forced retrain takes the next free one.';
COMMENT ON COLUMN training_requests.retrain_of IS 'Model this one retrains (not part of the fingerprint).';
COMMENT ON COLUMN training_requests.cv_strategy IS
    'expanding (growing window), sliding (fixed-size window) or purged (k-fold with purging and embargo).';
COMMENT ON COLUMN training_requests.context_symbols IS
    'Other symbols whose bars feed features (the spec''s features, computed on each, aligned on time).';
COMMENT ON COLUMN training_requests.alpha_grid IS 'alpha values tuned by an inner time-series CV.';
COMMENT ON COLUMN training_requests.l1_ratio_grid IS 'l1_ratio values tuned by an inner time-series CV.';
COMMENT ON COLUMN training_requests.regime_configs IS
    'JSON array of regimes: {"kind": "volatility"|"trend", "mode": "feature"|"split", ...} (sfq_regimes).';

CREATE OR REPLACE FUNCTION sfq_request_fields() RETURNS SETOF pg_attribute
    LANGUAGE sql STABLE AS $$
    SELECT * FROM pg_attribute
     WHERE attrelid = 'training_requests'::regclass AND attnum > 0 AND NOT attisdropped
       AND attname NOT IN ('id', 'received_at', 'via', 'model_id', 'fingerprint', 'deduplicated', 'spec')
$$;

-- One parameter value against its contract ({default, rules, expects}); `field` names it in errors.
-- Integers without a decimal point, floats with one, so that 1 and 1.0 hash alike where they mean
-- the same and apart where they do not (max_features). A number written with a point tries float rules first.
CREATE FUNCTION sfq_canonical_param(field text, owner text, value jsonb, contract jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    rule jsonb;
    number numeric;
    written_as_float boolean;
BEGIN
    IF jsonb_typeof(value) <> 'number' THEN
        FOR rule IN SELECT jsonb_array_elements(contract->'rules') LOOP
            IF sfq_rule_matches(value, rule) THEN RETURN value; END IF;
        END LOOP;
    ELSE
        number := value::numeric;
        written_as_float := scale(number) > 0;
        FOR rule IN
            SELECT r FROM jsonb_array_elements(contract->'rules') WITH ORDINALITY AS t(r, i)
            ORDER BY (r->>'type' = 'integer') = written_as_float, i
        LOOP
            IF sfq_rule_matches(value, rule) THEN
                IF rule->>'type' = 'integer' THEN
                    RETURN to_jsonb(trunc(number));
                END IF;
                RETURN to_jsonb(round(number, greatest(scale(trim_scale(number)), 1)));
            END IF;
        END LOOP;
    END IF;
    PERFORM sfq_reject(field, format('%s is not valid for %s (expected %s)', value, owner, contract->>'expects'));
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_canonical_value(algorithm text, param text, value jsonb, contract jsonb)
    RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT sfq_canonical_param('hyperparameters.' || param, algorithm, value, contract)
$$;

-- A parameter object against its contracts: unknown names refused, every parameter present (defaults
-- filled in), each value canonical. Shared by hyperparameters and regime configurations.
CREATE FUNCTION sfq_canonical_params(field text, owner text, given jsonb, contracts jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    param text;
    canonical jsonb := '{}';
BEGIN
    FOR param IN SELECT jsonb_object_keys(given) LOOP
        IF NOT contracts ? param THEN
            PERFORM sfq_reject(field || '.' || param, format('unknown parameter for %s; valid: %s', owner,
                (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(contracts) AS k)));
        END IF;
    END LOOP;
    FOR param IN SELECT jsonb_object_keys(contracts) LOOP
        canonical := canonical || jsonb_build_object(param,
            CASE WHEN given ? param
                 THEN sfq_canonical_param(field || '.' || param, owner, given->param, contracts->param)
                 ELSE contracts->param->'default' END);
    END LOOP;
    RETURN canonical;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_canonical_hyperparameters(algorithm text, given jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF jsonb_typeof(given) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject('hyperparameters', format('must be a JSON object, got %s', given));
    END IF;
    RETURN sfq_canonical_params('hyperparameters', algorithm, given,
                                (SELECT a.hyperparameters FROM sfq_algorithms a WHERE a.name = algorithm));
END;
$$;

-- A grid of values for one hyperparameter: each value valid for it, finite, sorted, de-duplicated.
CREATE FUNCTION sfq_canonical_grid(field text, param text, grid double precision[], algorithm text,
                                   given_hyperparameters jsonb) RETURNS double precision[]
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    contract jsonb;
    value double precision;
BEGIN
    grid := sfq_require(field, grid);
    IF cardinality(grid) = 0 THEN
        RETURN grid;
    END IF;
    SELECT a.hyperparameters->param INTO contract FROM sfq_algorithms a WHERE a.name = algorithm;
    IF contract IS NULL THEN
        PERFORM sfq_reject(field, format('%s has no %s to search; a %s applies to %s', algorithm, param, field,
            (SELECT string_agg(a.name, ', ' ORDER BY a.name) FROM sfq_algorithms a
              WHERE a.hyperparameters ? param)));
    END IF;
    IF given_hyperparameters ? param THEN
        PERFORM sfq_reject(field, format('give either hyperparameters.%s or %s, not both', param, field));
    END IF;
    IF cardinality(grid) > 50 THEN
        PERFORM sfq_reject(field, format('at most 50 values, got %s', cardinality(grid)));
    END IF;
    FOREACH value IN ARRAY grid LOOP
        IF value IS NULL OR value IN ('NaN', 'Infinity', '-Infinity') THEN
            PERFORM sfq_reject(field, format('values must be finite numbers, got %s', coalesce(value::text, 'NULL')));
        END IF;
        PERFORM sfq_canonical_param(field, algorithm, to_jsonb(value), contract);
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT v FROM unnest(grid) v ORDER BY 1);
END;
$$;

-- Regime configurations: each a known kind with its parameters (defaults filled in), sorted, de-duplicated.
CREATE FUNCTION sfq_canonical_regimes(configs jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    config jsonb;
    position bigint;
    field text;
    contracts jsonb;
    canonical jsonb := '[]';
BEGIN
    IF jsonb_typeof(sfq_require('regime_configs', configs)) <> 'array' THEN
        PERFORM sfq_reject('regime_configs', format('must be a JSON array, got %s', configs));
    END IF;
    IF jsonb_array_length(configs) > 5 THEN
        PERFORM sfq_reject('regime_configs', format('at most 5 regimes, got %s', jsonb_array_length(configs)));
    END IF;
    FOR config, position IN SELECT * FROM jsonb_array_elements(configs) WITH ORDINALITY LOOP
        field := format('regime_configs[%s]', position - 1);
        IF jsonb_typeof(config) <> 'object' OR jsonb_typeof(config->'kind') IS DISTINCT FROM 'string' THEN
            PERFORM sfq_reject(field, format('must be an object with a "kind" (one of %s), got %s',
                (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_regimes), config));
        END IF;
        SELECT r.parameters INTO contracts FROM sfq_regimes r WHERE r.name = config->>'kind';
        IF contracts IS NULL THEN
            PERFORM sfq_reject(field || '.kind', format('%L is not one of %s', config->>'kind',
                (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_regimes)));
        END IF;
        canonical := canonical || jsonb_build_array(jsonb_build_object('kind', config->>'kind')
            || sfq_canonical_params(field, format('regime %s', config->>'kind'), config - 'kind', contracts));
    END LOOP;
    canonical := coalesce((SELECT jsonb_agg(DISTINCT c ORDER BY c) FROM jsonb_array_elements(canonical) c), '[]');
    IF (SELECT count(DISTINCT (c->>'kind', c->>'window')) FROM jsonb_array_elements(canonical) c)
       < jsonb_array_length(canonical) THEN
        PERFORM sfq_reject('regime_configs', 'two regimes of the same kind and window would be one feature');
    END IF;
    IF (SELECT count(*) FROM jsonb_array_elements(canonical) c WHERE c->>'mode' = 'split') > 1 THEN
        PERFORM sfq_reject('regime_configs', 'at most one regime may have "mode": "split" (one model per regime)');
    END IF;
    RETURN canonical;
END;
$$;

-- Validate a request, fill in defaults, canonicalise, and compute its spec and fingerprint, without
-- enqueueing anything. `pin_data_end` pins data_end to the latest bar at or before it (the default
-- way in); the DuckDB import keeps the legacy data_end as it was. `known_hyperparameters`: the
-- canonical form of r.hyperparameters when the caller computed it already (a sweep, once per set).
CREATE FUNCTION sfq_canonical_request(r training_requests, pin_data_end boolean DEFAULT true,
                                      known_hyperparameters jsonb DEFAULT NULL)
    RETURNS training_requests
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    unknown text[];
    given_hyperparameters jsonb;
    context text;
BEGIN
    r.symbol := upper(btrim(sfq_require('symbol', r.symbol)));
    IF r.symbol !~ '^[A-Z0-9][A-Z0-9._:^=-]{0,31}$' THEN
        PERFORM sfq_reject('symbol', format('%L is not a ticker (letters, digits and ._:^=-, at most 32)',
                                            r.symbol));
    END IF;
    IF sfq_require('timeframe', r.timeframe) !~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' THEN
        PERFORM sfq_reject('timeframe', format('%L is not a timeframe such as 1d, 1h or 5m', r.timeframe));
    END IF;
    PERFORM sfq_check_choice('target_col', r.target_col, '{open,high,low,close}');
    PERFORM sfq_check_choice('target_transform', r.target_transform, '{log_return,pct_change,diff,raw}');
    PERFORM sfq_check_range('horizon', r.horizon, 1, 1000);
    PERFORM sfq_check_range('cv_folds', r.cv_folds, 2, 50);
    PERFORM sfq_check_range('train_window', r.train_window, 50, 1000000);
    PERFORM sfq_check_range('test_window', r.test_window, 10, 1000000);
    IF r.train_window < (r.cv_folds + 1) * (r.horizon + 10) THEN
        PERFORM sfq_reject('train_window', format(
            'must hold at least (cv_folds + 1) x (horizon + 10) = %s bars for %s folds, got %s',
            (r.cv_folds + 1) * (r.horizon + 10), r.cv_folds, r.train_window));
    END IF;
    PERFORM sfq_check_choice('cv_strategy', r.cv_strategy, '{expanding,sliding,purged}');
    PERFORM sfq_check_range('run', r.run, 1, 1000000);

    IF NOT EXISTS (SELECT 1 FROM sfq_algorithms WHERE name = sfq_require('algorithm', r.algorithm)) THEN
        PERFORM sfq_reject('algorithm', format('%L is not one of %s', r.algorithm,
                           (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_algorithms)));
    END IF;
    given_hyperparameters := coalesce(r.hyperparameters, '{}');
    r.hyperparameters := coalesce(known_hyperparameters,
                                  sfq_canonical_hyperparameters(r.algorithm, given_hyperparameters));
    -- A grid owns its parameter: the value the inner CV picks is stored with the model's metrics.
    r.alpha_grid := sfq_canonical_grid('alpha_grid', 'alpha', r.alpha_grid, r.algorithm, given_hyperparameters);
    r.l1_ratio_grid := sfq_canonical_grid('l1_ratio_grid', 'l1_ratio', r.l1_ratio_grid, r.algorithm,
                                          given_hyperparameters);
    IF cardinality(r.alpha_grid) * greatest(cardinality(r.l1_ratio_grid), 1) > 400 THEN
        PERFORM sfq_reject('l1_ratio_grid', format('alpha_grid x l1_ratio_grid is %s combinations; at most 400',
                           cardinality(r.alpha_grid) * cardinality(r.l1_ratio_grid)));
    END IF;
    IF cardinality(r.alpha_grid) > 0 THEN r.hyperparameters := r.hyperparameters - 'alpha'; END IF;
    IF cardinality(r.l1_ratio_grid) > 0 THEN r.hyperparameters := r.hyperparameters - 'l1_ratio'; END IF;

    IF r.features IS NULL THEN
        r.features := ARRAY(SELECT name FROM sfq_features WHERE is_default ORDER BY name);
    ELSE
        IF cardinality(r.features) = 0 THEN
            PERFORM sfq_reject('features', 'must name at least one feature (NULL means the default set)');
        END IF;
        unknown := ARRAY(SELECT f FROM unnest(r.features) f WHERE f IS NULL OR f NOT IN (SELECT name FROM sfq_features));
        IF cardinality(unknown) > 0 THEN
            PERFORM sfq_reject('features', format('unknown %s; valid: %s', array_to_string(unknown, ', ', 'NULL'),
                               (SELECT string_agg(name, ', ' ORDER BY position) FROM sfq_features)));
        END IF;
        r.features := ARRAY(SELECT DISTINCT f FROM unnest(r.features) f ORDER BY f);
    END IF;

    r.context_symbols := ARRAY(SELECT DISTINCT upper(btrim(s))
                                 FROM unnest(sfq_require('context_symbols', r.context_symbols)) s ORDER BY 1);
    IF cardinality(r.context_symbols) > 10 THEN
        PERFORM sfq_reject('context_symbols', format('at most 10 symbols, got %s', cardinality(r.context_symbols)));
    END IF;
    FOREACH context IN ARRAY r.context_symbols LOOP
        IF context IS NULL OR context !~ '^[A-Z0-9][A-Z0-9._:^=-]{0,31}$' THEN
            PERFORM sfq_reject('context_symbols', format('%L is not a ticker', context));
        END IF;
        IF context = r.symbol THEN
            PERFORM sfq_reject('context_symbols', format('%s is the model''s own symbol', context));
        END IF;
    END LOOP;
    r.regime_configs := sfq_canonical_regimes(r.regime_configs);

    IF r.timeout_s IS NOT NULL THEN
        PERFORM sfq_check_range('timeout_s', r.timeout_s, 1, 604800);
    END IF;
    IF r.parent_model_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM models WHERE id = r.parent_model_id) THEN
        PERFORM sfq_reject('parent_model_id', format('no model with id %s', r.parent_model_id));
    END IF;
    IF r.retrain_of IS NOT NULL AND NOT EXISTS (SELECT 1 FROM models WHERE id = r.retrain_of) THEN
        PERFORM sfq_reject('retrain_of', format('no model with id %s', r.retrain_of));
    END IF;

    IF r.data_end IS NOT NULL AND NOT r.data_end BETWEEN '1800-01-01Z' AND '2200-01-01Z' THEN
        PERFORM sfq_reject('data_end', format('%s is not a date between 1800 and 2200', r.data_end));
    END IF;
    IF pin_data_end THEN
        -- Pin the data: the last bar at or before the requested end (the latest bar by default).
        r.data_end := coalesce(
            (SELECT max(ts) FROM bars b
              WHERE b.symbol = r.symbol AND b.timeframe = r.timeframe
                AND (r.data_end IS NULL OR b.ts <= r.data_end)),
            r.data_end);
        -- A context symbol must have bars the model may see (the main symbol's absence fails at training,
        -- with the import command to run; a context symbol is caught here, before anything is queued).
        FOREACH context IN ARRAY r.context_symbols LOOP
            IF NOT EXISTS (SELECT 1 FROM bars b WHERE b.symbol = context AND b.timeframe = r.timeframe
                              AND (r.data_end IS NULL OR b.ts <= r.data_end)) THEN
                PERFORM sfq_reject('context_symbols', format(
                    'no %s bars for context symbol %s%s; import some with `sfq bars import FILE.csv --symbol %s`',
                    r.timeframe, context, coalesce(' up to ' || sfq_utc_text(r.data_end), ''), context));
            END IF;
        END LOOP;
    END IF;

    r.spec := jsonb_build_object(
        'spec_version', 1,
        'symbol', r.symbol, 'timeframe', r.timeframe,
        'target_col', r.target_col, 'target_transform', r.target_transform, 'horizon', r.horizon,
        'algorithm', r.algorithm, 'hyperparameters', r.hyperparameters, 'features', to_jsonb(r.features),
        'train_window', r.train_window, 'test_window', r.test_window,
        'data_end', sfq_utc_text(r.data_end),
        'cv_folds', r.cv_folds, 'cv_strategy', r.cv_strategy,
        'context_symbols', to_jsonb(r.context_symbols),
        'alpha_grid', to_jsonb(r.alpha_grid), 'l1_ratio_grid', to_jsonb(r.l1_ratio_grid),
        'regime_configs', r.regime_configs
    ) || CASE WHEN r.run > 1 THEN jsonb_build_object('run', r.run) ELSE '{}' END;  -- run 1 hashes as before
    r.fingerprint := encode(sha256(convert_to(r.spec::text, 'UTF8')), 'hex');
    RETURN r;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_accept_training_request() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW := sfq_canonical_request(NEW);
    PERFORM sfq_check_range('priority', NEW.priority, -100, 100);
    LOOP
        INSERT INTO models (
            fingerprint, spec, symbol, timeframe, target_col, target_transform, horizon, algorithm,
            hyperparameters, features, train_window, test_window, data_end, cv_folds, cv_strategy,
            context_symbols, alpha_grid, l1_ratio_grid, regime_configs, parent_model_id, timeout_s,
            retrain_of, run, priority)
        VALUES (
            NEW.fingerprint, NEW.spec, NEW.symbol, NEW.timeframe, NEW.target_col, NEW.target_transform,
            NEW.horizon, NEW.algorithm, NEW.hyperparameters, NEW.features, NEW.train_window,
            NEW.test_window, NEW.data_end, NEW.cv_folds, NEW.cv_strategy, NEW.context_symbols,
            NEW.alpha_grid, NEW.l1_ratio_grid, NEW.regime_configs, NEW.parent_model_id, NEW.timeout_s,
            NEW.retrain_of, NEW.run, NEW.priority)
        ON CONFLICT (fingerprint) WHERE status NOT IN ('failed', 'cancelled') DO NOTHING
        RETURNING id INTO NEW.model_id;

        IF NEW.model_id IS NOT NULL THEN
            NEW.deduplicated := false;
            PERFORM sfq_defer_training(NEW.model_id);
            RETURN NEW;
        END IF;

        -- Same fingerprint already live: that model serves this request. (Loop if it just failed.)
        SELECT id INTO NEW.model_id FROM models
         WHERE fingerprint = NEW.fingerprint AND status NOT IN ('failed', 'cancelled');
        IF NEW.model_id IS NOT NULL THEN
            NEW.deduplicated := true;
            RETURN NEW;
        END IF;
    END LOOP;
END;
$$;

DROP FUNCTION sfq_not_supported_yet(text, text);

-- The request that reproduces a model: its canonical fields (grids and their parameters as they were).
CREATE FUNCTION sfq_model_request(m models) RETURNS jsonb
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

CREATE FUNCTION sfq_model(model bigint, lock boolean DEFAULT false) RETURNS models
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

-- POST /train/batch: one model per target column, in one transaction, each deduplicated on its own.
CREATE FUNCTION sfq_submit_batch(request jsonb, via text DEFAULT 'sql') RETURNS SETOF training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    target text;
BEGIN
    IF jsonb_typeof(request) = 'object' AND request ? 'target_col' THEN
        PERFORM sfq_reject('target_col', 'is set by the batch: one model per target (open, close, high, low)');
    END IF;
    FOREACH target IN ARRAY ARRAY['open', 'close', 'high', 'low'] LOOP
        RETURN NEXT sfq_submit(request || jsonb_build_object('target_col', target), via);
    END LOOP;
END;
$$;

-- POST /retrain/{id}: the model's spec again on the data there is now (data_end moves to the latest bar).
-- Without new bars the fingerprint is the model's own, so the answer is that model (deduplicated), unless
-- `force`: then the spec takes the next run number that is not live (`run` is part of the fingerprint
-- from 2 on), so a forced retrain is a new model with a fingerprint of its own.
CREATE FUNCTION sfq_retrain(model bigint, force boolean DEFAULT false, via text DEFAULT 'sql')
    RETURNS training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    old models := sfq_model(model);
    latest timestamptz;
    request jsonb;
    next_run integer;
    accepted training_requests;
BEGIN
    SELECT max(ts) INTO latest FROM bars WHERE symbol = old.symbol AND timeframe = old.timeframe;
    next_run := CASE WHEN latest IS NOT DISTINCT FROM old.data_end THEN old.run ELSE 1 END;
    request := sfq_model_request(old) - 'data_end' || jsonb_build_object('retrain_of', old.id);
    LOOP
        accepted := sfq_submit(request || jsonb_build_object('run', next_run), via);
        EXIT WHEN NOT force OR NOT accepted.deduplicated;
        next_run := next_run + 1;
    END LOOP;
    RETURN accepted;
END;
$$;

-- POST /api/train_with_parent: the parent's spec with `overrides` applied field by field
-- (hyperparameters key by key; a null resets a field to its default), validated like any request.
-- A new algorithm starts from its own defaults; a hyperparameter given for a parameter the parent
-- searched on a grid replaces the grid (and a new grid replaces the parent's value).
CREATE FUNCTION sfq_evolve(parent bigint, overrides jsonb, via text DEFAULT 'sql') RETURNS training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    p models;
    base jsonb;
    params jsonb;
    param text;
BEGIN
    IF parent IS NULL THEN
        PERFORM sfq_reject('parent_model_id', 'is required');
    END IF;
    SELECT * INTO p FROM models WHERE id = parent;
    IF NOT FOUND THEN
        PERFORM sfq_reject('parent_model_id', format('no model with id %s', parent));
    END IF;
    IF overrides IS NULL OR overrides = 'null' THEN
        overrides := '{}';
    END IF;
    IF jsonb_typeof(overrides) <> 'object' THEN
        PERFORM sfq_reject('overrides', format('must be a JSON object, got %s', overrides));
    END IF;
    IF overrides ?| ARRAY['parent_model_id', 'retrain_of', 'run'] THEN
        PERFORM sfq_reject('overrides', 'parent_model_id, retrain_of and run are set by the evolution itself');
    END IF;
    base := sfq_model_request(p) - 'run' - 'parent_model_id';
    IF overrides ? 'algorithm' AND overrides->>'algorithm' IS DISTINCT FROM p.algorithm THEN
        base := base - 'hyperparameters' - 'alpha_grid' - 'l1_ratio_grid';
    END IF;
    params := coalesce(base->'hyperparameters', '{}');
    IF overrides->'hyperparameters' = 'null' THEN  -- back to the algorithm's defaults
        params := '{}';
        base := base - 'alpha_grid' - 'l1_ratio_grid';
    END IF;
    IF jsonb_typeof(overrides->'hyperparameters') = 'object' THEN
        FOR param IN SELECT jsonb_object_keys(overrides->'hyperparameters') LOOP
            IF param IN ('alpha', 'l1_ratio') AND NOT overrides ? (param || '_grid') THEN
                base := base - (param || '_grid');
            END IF;
        END LOOP;
        params := params || (overrides->'hyperparameters');
    END IF;
    FOREACH param IN ARRAY ARRAY['alpha', 'l1_ratio'] LOOP
        IF jsonb_typeof(overrides->(param || '_grid')) = 'array'
           AND jsonb_array_length(overrides->(param || '_grid')) > 0
           AND NOT coalesce(overrides->'hyperparameters', '{}') ? param THEN
            params := params - param;
        END IF;
    END LOOP;
    RETURN sfq_submit(base || (overrides - 'hyperparameters')
                      || jsonb_build_object('hyperparameters',
                             CASE WHEN jsonb_typeof(overrides->'hyperparameters') IN ('object', 'null')
                                       OR NOT overrides ? 'hyperparameters'
                                  THEN params ELSE overrides->'hyperparameters' END,
                                            'parent_model_id', parent), via);
END;
$$;

-- POST /models/{id}/cancel: a queued model never runs; a running one is stopped (Procrastinate's abort
-- cancels the job's task in its worker, which kills the training process). Either ends `cancelled`.
CREATE FUNCTION sfq_cancel_model(model bigint) RETURNS models
    LANGUAGE plpgsql AS $$
DECLARE
    m models := sfq_model(model, lock => true);
BEGIN
    IF m.status NOT IN ('queued', 'running') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s is already %s: only a queued or running model can be cancelled',
                             model, m.status);
    END IF;
    UPDATE models SET status = 'cancelled', finished_at = now(), error = 'cancelled on request'
     WHERE id = model RETURNING * INTO m;
    IF m.job_id IS NOT NULL THEN
        PERFORM procrastinate_cancel_job_v1(m.job_id, abort => true, delete_job => false);
    END IF;
    RETURN m;
END;
$$;

-- Live forecasts (POST /models/{id}/predict): a worker loads the stored model and predicts from the
-- latest bar. One forecast per model and bar: asking again before a new bar returns the same one.
CREATE TABLE model_forecasts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    as_of timestamptz NOT NULL,  -- the latest bar when asked: the forecast is for as_of + horizon bars
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'completed', 'failed')),
    prediction double precision,       -- in target_transform units
    reference_close double precision,  -- the close at as_of
    predicted_price double precision,  -- the implied target_col price
    error text,
    job_id bigint,
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (model_id, as_of)
);

CREATE FUNCTION sfq_defer_forecast(forecast bigint) RETURNS bigint
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

CREATE FUNCTION sfq_request_forecast(model bigint) RETURNS model_forecasts
    LANGUAGE plpgsql AS $$
DECLARE
    m models := sfq_model(model);
    latest timestamptz;
    f model_forecasts;
BEGIN
    IF m.status <> 'completed' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s is %s: only a completed model can predict', model, m.status);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM model_artifacts a WHERE a.model_id = model) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s has no stored model file to predict with', model);
    END IF;
    SELECT max(ts) INTO latest FROM bars WHERE symbol = m.symbol AND timeframe = m.timeframe;
    IF latest IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('no %s bars for %s to predict from', m.timeframe, m.symbol);
    END IF;
    INSERT INTO model_forecasts (model_id, as_of) VALUES (model, latest)
        ON CONFLICT (model_id, as_of) DO NOTHING RETURNING * INTO f;
    IF FOUND THEN
        PERFORM sfq_defer_forecast(f.id);
    ELSE
        SELECT * INTO f FROM model_forecasts WHERE model_id = model AND as_of = latest FOR UPDATE;
        -- Asked again: a failed forecast, or one whose job ended without answering, is tried again.
        IF f.status = 'failed' OR (f.status = 'queued' AND NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs j WHERE j.id = f.job_id AND j.status IN ('todo', 'doing'))) THEN
            PERFORM sfq_defer_forecast(f.id);
        END IF;
    END IF;
    SELECT * INTO f FROM model_forecasts WHERE id = f.id;
    RETURN f;
END;
$$;

-- Backtests of a model. The DuckDB import moves the old service's rows here; the simulation task
-- (issue 4) writes new ones.
CREATE TABLE simulation_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    strategy text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}',
    period_start timestamptz,
    period_end timestamptz,
    metrics jsonb NOT NULL DEFAULT '{}',
    equity_curve jsonb,  -- [[ts, equity], ...]
    imported_from text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX simulation_history_run
    ON simulation_history (model_id, strategy, params, coalesce(period_start, '-infinity'),
                           coalesce(period_end, '-infinity'));
