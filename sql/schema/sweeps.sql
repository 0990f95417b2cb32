-- sfq/sweeps: a base spec and a grid, one model per combination, all enqueued in one set-based transaction
-- (POST /sweeps, `sfq sweep`); the leaderboard is the API's.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- The cartesian product of a grid {"field": [values], "hyperparameters.name": [values], ...} as an
-- array of override objects, in a stable order (keys sorted, values as given).
CREATE OR REPLACE FUNCTION sfq_expand_grid(grid jsonb, max_combinations integer) RETURNS jsonb
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
-- canonicalised once), then models inserted, deduplicated and deferred set-based: one INSERT
-- (sfq_insert_models), one batch of Procrastinate jobs (sfq_defer_training). A bad combination refuses
-- the whole sweep, naming the field.
CREATE OR REPLACE FUNCTION sfq_submit_sweep(base jsonb, grid jsonb, priority integer DEFAULT -10, via text DEFAULT 'sql',
                                            max_combinations integer DEFAULT 10000)
    RETURNS sweeps
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    started timestamptz := clock_timestamp();
    combos jsonb;
    key text;
    values_ jsonb;
    defaults jsonb := sfq_request_defaults();
    sweep sweeps;
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
    -- the default; `hyperparameters.<name>` merged into the hyperparameters, where null is a value), at
    -- the sweep's priority.
    CREATE TEMP TABLE sweep_requests ON COMMIT DROP AS
    SELECT position::integer, combination,
           defaults || base
           || coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(combination) e(k, v)
                         WHERE k !~ '^hyperparameters\.' AND v <> 'null'), '{}')
           || jsonb_build_object('hyperparameters',
                  coalesce(combination->'hyperparameters', base->'hyperparameters', '{}')
                  || coalesce((SELECT jsonb_object_agg(substr(k, 17), v) FROM jsonb_each(combination) e(k, v)
                                WHERE k ~ '^hyperparameters\.'), '{}'))
           || jsonb_build_object('priority', sfq_submit_sweep.priority) AS request
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

    -- Every combination's model in one INSERT (a live model with its fingerprint is reused; the first
    -- combination of a fingerprint makes it, models in fingerprint order), and the new ones' jobs in one
    -- batch, in the order of their ids.
    new_ids := sfq_insert_models(ARRAY(SELECT DISTINCT ON ((c.r).fingerprint) sfq_new_model(c.r)
                                         FROM sweep_canonical c ORDER BY (c.r).fingerprint, c.position));
    PERFORM sfq_defer_training(new_ids, array_fill(sfq_submit_sweep.priority, ARRAY[cardinality(new_ids)]));

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
