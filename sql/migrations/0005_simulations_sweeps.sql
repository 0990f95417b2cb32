-- sfq 0005: backtests of every trained model (simulation_history, the `simulation` queue), and sweeps of
-- many configurations enqueued in one set-based transaction.

-- Backtest strategies and their parameters, written by sql/registry.sql from workers/simulation.py.
CREATE TABLE sfq_strategies (
    name text PRIMARY KEY,
    description text NOT NULL,
    parameters jsonb NOT NULL  -- {param: {default, rules: [...], expects}}, as sfq_algorithms
);

-- The JSON way in, split so that a sweep can check its base and each grid value once, not once per
-- combination: each field's JSON type checked by name, top-level nulls dropped (null = the default),
-- integers written as integers.
CREATE FUNCTION sfq_check_request_json(request jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    field text;
    value jsonb;
    column_type text;
    expected text;
    wrong boolean;
BEGIN
    IF jsonb_typeof(request) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject('request', 'must be a JSON object');
    END IF;
    -- Top-level nulls only: a null inside hyperparameters is a value (max_depth: null = unlimited).
    request := coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(request) AS e(k, v)
                          WHERE v <> 'null'::jsonb), '{}');
    FOR field, value IN SELECT * FROM jsonb_each(request) LOOP
        SELECT format_type(atttypid, atttypmod) INTO column_type
          FROM sfq_request_fields() WHERE attname = field;
        IF column_type IS NULL THEN
            PERFORM sfq_reject(field, format('unknown field; valid fields: %s',
                               (SELECT string_agg(attname, ', ' ORDER BY attnum) FROM sfq_request_fields())));
        END IF;
        wrong := false;
        expected := CASE column_type
            WHEN 'text' THEN 'string'
            WHEN 'integer' THEN 'number'
            WHEN 'bigint' THEN 'number'
            WHEN 'timestamp with time zone' THEN 'string'
            WHEN 'text[]' THEN 'array'
            WHEN 'double precision[]' THEN 'array'
            ELSE jsonb_typeof(value)
        END;
        IF jsonb_typeof(value) <> expected THEN
            wrong := true;
        ELSIF column_type IN ('integer', 'bigint') THEN
            wrong := value::numeric <> trunc(value::numeric);
        ELSIF column_type LIKE '%[]' THEN
            wrong := EXISTS (SELECT 1 FROM jsonb_array_elements(value) e
                              WHERE jsonb_typeof(e) <> CASE column_type WHEN 'text[]' THEN 'string' ELSE 'number' END);
        END IF;
        IF wrong THEN
            PERFORM sfq_reject(field, format('expected %s, got %s', CASE column_type
                WHEN 'text[]' THEN 'an array of strings'
                WHEN 'double precision[]' THEN 'an array of numbers'
                WHEN 'integer' THEN 'an integer'
                WHEN 'bigint' THEN 'an integer'
                WHEN 'timestamp with time zone' THEN 'a timestamp string'
                ELSE 'a ' || expected END, value));
        END IF;
        IF column_type IN ('integer', 'bigint') THEN
            request := jsonb_set(request, ARRAY[field], to_jsonb(trunc(value::numeric)));
        END IF;
        BEGIN
            PERFORM jsonb_populate_record(NULL::training_requests, jsonb_build_object(field, request->field));
        EXCEPTION WHEN data_exception THEN
            PERFORM sfq_reject(field, format('%s is not a valid %s', value, column_type));
        END;
    END LOOP;
    RETURN request;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_submit(request jsonb, via text DEFAULT 'sql') RETURNS training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    columns text;
    accepted training_requests;
BEGIN
    request := sfq_check_request_json(request);
    SELECT coalesce(string_agg(', ' || quote_ident(k), ''), '') INTO columns FROM jsonb_object_keys(request) k;
    EXECUTE format(
        'INSERT INTO training_requests (via%s) SELECT $2%s FROM jsonb_populate_record(NULL::training_requests, $1) '
        'RETURNING *', columns, columns)
        INTO accepted USING request, via;
    RETURN accepted;
END;
$$;

-- Every request column's default, as JSON (jsonb_populate_record leaves an absent column NULL).
CREATE FUNCTION sfq_request_defaults() RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    defaults jsonb := '{}';
    name text;
    expression text;
    value jsonb;
BEGIN
    FOR name, expression IN
        SELECT a.attname, pg_get_expr(d.adbin, d.adrelid)
          FROM sfq_request_fields() a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LOOP
        EXECUTE format('SELECT to_jsonb(%s)', expression) INTO value;
        defaults := defaults || jsonb_build_object(name, value);
    END LOOP;
    RETURN defaults;
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- Simulations: backtests of a model's held-out predictions (workers/simulation.py).

ALTER TABLE simulation_history
    ADD COLUMN status text NOT NULL DEFAULT 'completed' CHECK (status IN ('queued', 'completed', 'failed')),
    ADD COLUMN error text,
    ADD COLUMN job_id bigint,
    ADD COLUMN finished_at timestamptz;
-- One simulation per model, strategy and parameters (asking again returns it); imported rows keep theirs.
CREATE UNIQUE INDEX simulation_history_request ON simulation_history (model_id, strategy, params)
    WHERE imported_from IS NULL;

CREATE FUNCTION sfq_defer_simulation(simulation bigint, priority integer DEFAULT 0) RETURNS bigint
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

-- POST /simulate: a backtest of a completed model with a strategy and its parameters (validated and
-- completed with defaults against sfq_strategies). The same request again returns the same simulation
-- (a failed one, or one whose job ended without answering, is tried again).
CREATE FUNCTION sfq_request_simulation(model bigint, strategy text DEFAULT 'long_short',
                                       params jsonb DEFAULT '{}', priority integer DEFAULT 0)
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
    INSERT INTO simulation_history (model_id, strategy, params, status)
    VALUES (model, strategy, params, 'queued')
    ON CONFLICT (model_id, strategy, params) WHERE imported_from IS NULL DO NOTHING
    RETURNING * INTO s;
    IF FOUND THEN
        PERFORM sfq_defer_simulation(s.id, priority);
    ELSE
        SELECT * INTO s FROM simulation_history h
         WHERE h.model_id = model AND h.strategy = sfq_request_simulation.strategy
           AND h.params = sfq_request_simulation.params AND h.imported_from IS NULL
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

-- ---------------------------------------------------------------------------------------------------
-- Sweeps: a base spec and a grid, one model per combination, all enqueued in one transaction.

CREATE TABLE sweeps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    via text NOT NULL DEFAULT 'sql',
    base jsonb NOT NULL,
    grid jsonb NOT NULL,
    priority integer NOT NULL,
    combinations integer NOT NULL,
    created integer NOT NULL,  -- new models; the others were reused (same fingerprint, live)
    elapsed_ms double precision NOT NULL
);

CREATE TABLE sweep_models (
    sweep_id bigint NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    position integer NOT NULL,  -- the combination's place in the expansion
    combination jsonb NOT NULL,
    model_id bigint NOT NULL REFERENCES models (id),
    deduplicated boolean NOT NULL,
    PRIMARY KEY (sweep_id, position)
);
CREATE INDEX sweep_models_model ON sweep_models (model_id);

-- The cartesian product of a grid {"field": [values], "hyperparameters.name": [values], ...} as an
-- array of override objects, in a stable order (keys sorted, values as given).
CREATE FUNCTION sfq_expand_grid(grid jsonb, max_combinations integer) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    key text;
    values_ jsonb;
    total numeric := 1;
    combos jsonb := '[{}]';
BEGIN
    IF jsonb_typeof(grid) IS DISTINCT FROM 'object' OR grid = '{}' THEN
        PERFORM sfq_reject('grid', 'must be a non-empty JSON object of field: [values]');
    END IF;
    FOR key, values_ IN SELECT e.key, e.value FROM jsonb_each(grid) e ORDER BY 1 LOOP
        IF jsonb_typeof(values_) <> 'array' OR jsonb_array_length(values_) = 0 THEN
            PERFORM sfq_reject('grid.' || key, format('must be a non-empty array of values, got %s', values_));
        END IF;
        IF key ~ '^hyperparameters\.' THEN
            IF key !~ '^hyperparameters\.[A-Za-z_][A-Za-z0-9_]*$' THEN
                PERFORM sfq_reject('grid.' || key, 'is not a hyperparameter name');
            END IF;
        ELSIF NOT EXISTS (SELECT 1 FROM sfq_request_fields() WHERE attname = key)
              OR key IN ('parent_model_id', 'retrain_of', 'priority') THEN
            PERFORM sfq_reject('grid.' || key, format('is not a field a sweep can vary; valid: %s, hyperparameters.<name>',
                (SELECT string_agg(attname, ', ' ORDER BY attnum) FROM sfq_request_fields()
                  WHERE attname NOT IN ('parent_model_id', 'retrain_of', 'priority'))));
        END IF;
        total := total * jsonb_array_length(values_);
        IF total > max_combinations THEN
            PERFORM sfq_reject('grid', format('%s combinations and more; a sweep may have at most %s',
                                              total, max_combinations));
        END IF;
    END LOOP;
    FOR key, values_ IN SELECT e.key, e.value FROM jsonb_each(grid) e ORDER BY 1 LOOP
        combos := (SELECT jsonb_agg(c || jsonb_build_object(key, v) ORDER BY i, j)
                     FROM jsonb_array_elements(combos) WITH ORDINALITY AS a(c, i),
                          jsonb_array_elements(values_) WITH ORDINALITY AS b(v, j));
    END LOOP;
    RETURN combos;
END;
$$;

-- POST /sweeps. Validation and canonicalisation as for any request (each distinct hyperparameter set
-- canonicalised once), then models inserted, deduplicated and deferred set-based: one INSERT, one
-- batch of Procrastinate jobs. A bad combination refuses the whole sweep, naming the field.
CREATE FUNCTION sfq_submit_sweep(base jsonb, grid jsonb, priority integer DEFAULT -10, via text DEFAULT 'sql',
                                 max_combinations integer DEFAULT 10000)
    RETURNS sweeps
    LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    combos jsonb;
    key text;
    values_ jsonb;
    defaults jsonb := sfq_request_defaults();
    sweep sweeps;
    job_ids bigint[];
    new_ids bigint[];
    missing integer;
BEGIN
    PERFORM sfq_check_range('priority', priority, -100, 100);
    base := sfq_check_request_json(coalesce(base, '{}'));
    IF base ?| ARRAY['parent_model_id', 'retrain_of', 'priority'] THEN
        PERFORM sfq_reject('base', 'parent_model_id, retrain_of and priority are not part of a sweep''s base');
    END IF;
    combos := sfq_expand_grid(grid, max_combinations);  -- validates the grid's shape and size
    -- Each grid value type-checked once (integers written as integers), not once per combination.
    FOR key, values_ IN SELECT e.key, e.value FROM jsonb_each(grid) e WHERE e.key !~ '^hyperparameters\.' LOOP
        grid := jsonb_set(grid, ARRAY[key], (
            SELECT jsonb_agg(coalesce(sfq_check_request_json(jsonb_build_object(key, v))->key, 'null') ORDER BY i)
              FROM jsonb_array_elements(values_) WITH ORDINALITY AS e(v, i)));
    END LOOP;
    combos := sfq_expand_grid(grid, max_combinations);

    -- Each combination's request: defaults, then the base, then the combination (a null there means
    -- the default; `hyperparameters.<name>` merged into the hyperparameters, where null is a value).
    CREATE TEMP TABLE sweep_requests ON COMMIT DROP AS
    SELECT position::integer, combination,
           defaults || base
           || coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(combination) e(k, v)
                         WHERE k !~ '^hyperparameters\.' AND v <> 'null'), '{}')
           || jsonb_build_object('hyperparameters',
                  coalesce(combination->'hyperparameters', base->'hyperparameters', '{}')
                  || coalesce((SELECT jsonb_object_agg(substr(k, 17), v) FROM jsonb_each(combination) e(k, v)
                                WHERE k ~ '^hyperparameters\.'), '{}')) AS request
      FROM jsonb_array_elements(combos) WITH ORDINALITY AS t(combination, position);

    -- Each distinct (algorithm, hyperparameters) canonicalised once.
    CREATE TEMP TABLE sweep_hyperparameters ON COMMIT DROP AS
    SELECT DISTINCT request->>'algorithm' AS algorithm, request->'hyperparameters' AS given,
           NULL::jsonb AS canonical
      FROM sweep_requests;
    UPDATE sweep_hyperparameters
       SET canonical = sfq_canonical_hyperparameters(sfq_require('algorithm', algorithm), given)
     WHERE EXISTS (SELECT 1 FROM sfq_algorithms WHERE name = algorithm);

    CREATE TEMP TABLE sweep_canonical ON COMMIT DROP AS
    SELECT s.position, s.combination,
           sfq_canonical_request(jsonb_populate_record(NULL::training_requests, s.request), true, h.canonical) AS r
      FROM sweep_requests s
      LEFT JOIN sweep_hyperparameters h
        ON h.algorithm IS NOT DISTINCT FROM s.request->>'algorithm' AND h.given = s.request->'hyperparameters';

    WITH inserted AS (
        INSERT INTO models (
            fingerprint, spec, symbol, timeframe, target_col, target_transform, horizon, algorithm,
            hyperparameters, features, train_window, test_window, data_end, cv_folds, cv_strategy,
            context_symbols, alpha_grid, l1_ratio_grid, regime_configs, timeout_s, run, priority)
        SELECT DISTINCT ON ((r).fingerprint)
               (r).fingerprint, (r).spec, (r).symbol, (r).timeframe, (r).target_col, (r).target_transform,
               (r).horizon, (r).algorithm, (r).hyperparameters, (r).features, (r).train_window,
               (r).test_window, (r).data_end, (r).cv_folds, (r).cv_strategy, (r).context_symbols,
               (r).alpha_grid, (r).l1_ratio_grid, (r).regime_configs, (r).timeout_s, (r).run,
               sfq_submit_sweep.priority
          FROM sweep_canonical ORDER BY (r).fingerprint, position
        ON CONFLICT (fingerprint) WHERE status NOT IN ('failed', 'cancelled') DO NOTHING
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO new_ids FROM inserted;
    new_ids := coalesce(new_ids, '{}');

    job_ids := procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW('training', 'train_model', sfq_submit_sweep.priority, 'model:' || id, NULL,
                   jsonb_build_object('model_id', id), NULL)::procrastinate_job_to_defer_v1
          FROM unnest(new_ids) WITH ORDINALITY AS n(id, i) ORDER BY i));
    UPDATE models m SET job_id = j.job_id
      FROM unnest(new_ids, job_ids) AS j(model_id, job_id) WHERE m.id = j.model_id;

    INSERT INTO sweeps (via, base, grid, priority, combinations, created, elapsed_ms)
    VALUES (via, base, grid, sfq_submit_sweep.priority, jsonb_array_length(combos), cardinality(new_ids), 0)
    RETURNING * INTO sweep;
    INSERT INTO sweep_models (sweep_id, position, combination, model_id, deduplicated)
    SELECT sweep.id, c.position, c.combination, m.id, NOT (m.id = ANY (new_ids))
      FROM sweep_canonical c
      JOIN models m ON m.fingerprint = (c.r).fingerprint AND m.status NOT IN ('failed', 'cancelled');
    GET DIAGNOSTICS missing = ROW_COUNT;
    IF missing <> jsonb_array_length(combos) THEN  -- a live model failed in between: rare, retryable
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = 'a model of this sweep changed state while it was enqueued; submit the sweep again';
    END IF;
    UPDATE sweeps SET elapsed_ms = extract(epoch FROM clock_timestamp() - started) * 1000
     WHERE id = sweep.id RETURNING * INTO sweep;
    DROP TABLE sweep_requests, sweep_hyperparameters, sweep_canonical;
    RETURN sweep;
END;
$$;

-- Forecasts and backtests whose worker died: their job is closed and a new one deferred. Both are
-- written once whatever happens (their writes require `status = 'queued'`), so running again is safe.
CREATE FUNCTION sfq_rescue_stalled_side_jobs(stale_after_s double precision, own_worker bigint DEFAULT NULL)
    RETURNS TABLE (task text, object_id bigint, old_job_id bigint, new_job_id bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    stalled record;
BEGIN
    FOR stalled IN
        SELECT j.id, j.task_name, j.args
          FROM procrastinate_jobs j
          LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
         WHERE j.status = 'doing' AND j.task_name IN ('predict_model', 'simulate_model')
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
