-- sfq/operations: what the API and the CLI do to models, as functions any service may call in its own
-- transaction: batches (one model per target), retrains, evolutions (a child of a model) and cancellation.
-- Each new model is a request like any other (sfq_submit -> the training_requests triggers).
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- POST /train/batch: one model per target column (sfq_target_columns()), in one transaction, each
-- deduplicated on its own. In the old service's order: open and close first, then the others.
CREATE OR REPLACE FUNCTION sfq_submit_batch(request jsonb, via text DEFAULT 'sql') RETURNS SETOF training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    targets text[] := ARRAY(SELECT t FROM unnest(sfq_target_columns()) WITH ORDINALITY AS u(t, i)
                             ORDER BY array_position(ARRAY['open', 'close'], t) NULLS LAST, i);
    target text;
BEGIN
    IF jsonb_typeof(request) = 'object' AND request ? 'target_col' THEN
        PERFORM sfq_reject('target_col', format('is set by the batch: one model per target (%s)',
                                                array_to_string(targets, ', ')));
    END IF;
    FOREACH target IN ARRAY targets LOOP
        RETURN NEXT sfq_submit(request || jsonb_build_object('target_col', target), via);
    END LOOP;
END;
$$;

-- POST /retrain/{id}: the model's spec again on the data there is now (data_end moves to the latest bar).
-- Without new bars the fingerprint is the model's own, so the answer is that model (deduplicated), unless
-- `force`: then the spec takes the next run number that is not live (`run` is part of the fingerprint
-- from 2 on), so a forced retrain is a new model with a fingerprint of its own.
CREATE OR REPLACE FUNCTION sfq_retrain(model bigint, force boolean DEFAULT false, via text DEFAULT 'sql')
    RETURNS training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
CREATE OR REPLACE FUNCTION sfq_evolve(parent bigint, overrides jsonb, via text DEFAULT 'sql') RETURNS training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
CREATE OR REPLACE FUNCTION sfq_cancel_model(model bigint) RETURNS models
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
