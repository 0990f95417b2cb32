-- sfq/studies: a search over spec fields with Optuna's samplers and pruners (POST /studies, `sfq study
-- create`, sfq_create_study), each trial an sfq model. The study lives here: its row, its trials and
-- Optuna's journal (study_journal). The workers advance it through the queue: sfq_create_study defers the
-- first advance_study job, and every trial's model that ends defers the next (sfq_study_trial_ended), in
-- the transaction that ends it; the job asks the sampler for as many trials as there are free slots
-- (workers/daemon/studies.py). No driver process: any worker advances any study.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- A study error, naming its field (`space.horizon`, `objective`, ...) in the message and the COLUMN field.
CREATE OR REPLACE FUNCTION sfq_reject_study(field text, problem text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid study: %s: %s', field, problem),
                          COLUMN = field;
END;
$$;

-- The request a study's base makes with one field set to `value` (`hyperparameters.<name>` merged into the
-- hyperparameters; `algorithm`, when given, set too), checked as any request is; an error names `label`.
CREATE OR REPLACE FUNCTION sfq_check_study_value(base jsonb, field text, value jsonb, label text,
                                                 algorithm text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    request jsonb := sfq_request_defaults() || base;
    problem text;
    column_ text;
BEGIN
    IF algorithm IS NOT NULL THEN
        request := request || jsonb_build_object('algorithm', algorithm);
    END IF;
    IF field ~ '^hyperparameters\.' THEN
        request := request || jsonb_build_object('hyperparameters',
            coalesce(request->'hyperparameters', '{}') || jsonb_build_object(substr(field, 17), value));
    ELSIF field IS NOT NULL THEN
        request := request || sfq_check_request_json(jsonb_build_object(field, value));
    END IF;
    PERFORM sfq_canonical_request(jsonb_populate_record(NULL::training_requests, request));
EXCEPTION WHEN data_exception OR check_violation OR not_null_violation THEN
    GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT, column_ = COLUMN_NAME;
    IF field IS NULL THEN
        PERFORM sfq_reject_study('base.' || coalesce(nullif(column_, ''), 'request'), problem);
    END IF;
    PERFORM sfq_reject_study(label, format('%s gives a request that is refused: %s', value, problem));
END;
$$;

-- The algorithms a dimension can apply to: those its `when` names, else the space's algorithm choices,
-- else the base's algorithm (or the default).
CREATE OR REPLACE FUNCTION sfq_study_algorithms(base jsonb, space jsonb, dim jsonb) RETURNS text[]
    LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN dim->'when' ? 'algorithm' THEN ARRAY(
            SELECT jsonb_array_elements_text(CASE jsonb_typeof(dim->'when'->'algorithm')
                                                 WHEN 'array' THEN dim->'when'->'algorithm'
                                                 ELSE jsonb_build_array(dim->'when'->'algorithm') END))
        WHEN space->'algorithm'->>'type' = 'categorical' THEN ARRAY(
            SELECT jsonb_array_elements_text(space->'algorithm'->'choices'))
        ELSE ARRAY[coalesce(base->>'algorithm', sfq_request_defaults()->>'algorithm')]
    END
$$;

-- One dimension of a space: its shape, its bounds, and every value it can take (its bounds for a range)
-- accepted as a request would be. Returns how many points it has on a grid (NULL: not discrete).
CREATE OR REPLACE FUNCTION sfq_check_study_dimension(base jsonb, space jsonb, name text, dim jsonb)
    RETURNS numeric
    LANGUAGE plpgsql AS $$
DECLARE
    label text := 'space.' || name;
    kind text := dim->>'type';
    low numeric;
    high numeric;
    step numeric;
    algorithms text[];
    a text;
    v jsonb;
    points numeric;
BEGIN
    IF jsonb_typeof(dim) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject_study(label, 'must be an object such as {"type": "int", "low": 1, "high": 10}');
    END IF;
    IF name ~ '^hyperparameters\.' THEN
        IF name !~ '^hyperparameters\.[A-Za-z_][A-Za-z0-9_]*$' THEN
            PERFORM sfq_reject_study(label, 'is not a hyperparameter name');
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM sfq_request_fields() WHERE attname = name)
          OR name IN ('parent_model_id', 'retrain_of', 'priority', 'timeout_s', 'run') THEN
        PERFORM sfq_reject_study(label, format('is not a field a study can search; valid: %s, hyperparameters.<name>',
            (SELECT string_agg(attname, ', ' ORDER BY attnum) FROM sfq_request_fields()
              WHERE attname NOT IN ('parent_model_id', 'retrain_of', 'priority', 'timeout_s', 'run'))));
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_object_keys(dim) k
                WHERE k NOT IN ('type', 'low', 'high', 'step', 'log', 'choices', 'of', 'min_size', 'when')) THEN
        PERFORM sfq_reject_study(label, format('unknown key %s; a dimension has type, low, high, step, log, '
            'choices, of, min_size and when', (SELECT k FROM jsonb_object_keys(dim) k
                WHERE k NOT IN ('type', 'low', 'high', 'step', 'log', 'choices', 'of', 'min_size', 'when') LIMIT 1)));
    END IF;
    IF dim ? 'when' THEN
        IF jsonb_typeof(dim->'when') IS DISTINCT FROM 'object' OR dim->'when' = '{}' THEN
            PERFORM sfq_reject_study(label || '.when', 'must be an object of field: value (or [values])');
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_object_keys(dim->'when') k WHERE k = name OR NOT (space ? k)
                      AND NOT EXISTS (SELECT 1 FROM sfq_request_fields() WHERE attname = k)) THEN
            PERFORM sfq_reject_study(label || '.when', 'names a field that is neither in the space nor a request field');
        END IF;
    END IF;
    algorithms := sfq_study_algorithms(base, space, dim);

    IF kind IN ('int', 'float') THEN
        IF jsonb_typeof(dim->'low') IS DISTINCT FROM 'number' THEN
            PERFORM sfq_reject_study(label || '.low', 'is required (a number): a range must be bounded');
        END IF;
        IF jsonb_typeof(dim->'high') IS DISTINCT FROM 'number' THEN
            PERFORM sfq_reject_study(label || '.high', 'is required (a number): a range must be bounded');
        END IF;
        low := (dim->>'low')::numeric;
        high := (dim->>'high')::numeric;
        IF low >= high THEN
            PERFORM sfq_reject_study(label || '.low', format('must be below high (low %s, high %s)', low, high));
        END IF;
        IF dim ? 'log' AND jsonb_typeof(dim->'log') IS DISTINCT FROM 'boolean' THEN
            PERFORM sfq_reject_study(label || '.log', 'must be true or false');
        END IF;
        IF dim ? 'step' AND (jsonb_typeof(dim->'step') IS DISTINCT FROM 'number' OR (dim->>'step')::numeric <= 0) THEN
            PERFORM sfq_reject_study(label || '.step', 'must be a positive number');
        END IF;
        step := (dim->>'step')::numeric;
        IF coalesce((dim->>'log')::boolean, false) THEN
            IF low <= 0 OR (kind = 'int' AND low < 1) THEN
                PERFORM sfq_reject_study(label || '.low', 'must be positive (1 or more for an int) on a log scale');
            END IF;
            IF step IS NOT NULL AND step <> 1 THEN
                PERFORM sfq_reject_study(label || '.step', 'cannot be set on a log scale');
            END IF;
        END IF;
        IF kind = 'int' AND (low <> trunc(low) OR high <> trunc(high) OR step <> trunc(step)) THEN
            PERFORM sfq_reject_study(label, 'an int dimension has integer low, high and step');
        END IF;
        IF kind = 'int' OR step IS NOT NULL THEN
            points := floor((high - low) / coalesce(step, 1)) + 1;
        END IF;
        FOREACH a IN ARRAY algorithms LOOP
            PERFORM sfq_check_study_value(base, name, dim->'low', label || '.low', a);
            PERFORM sfq_check_study_value(base, name, dim->'high', label || '.high', a);
        END LOOP;
    ELSIF kind = 'categorical' THEN
        IF jsonb_typeof(dim->'choices') IS DISTINCT FROM 'array' OR jsonb_array_length(dim->'choices') = 0 THEN
            PERFORM sfq_reject_study(label || '.choices', 'must be a non-empty array');
        END IF;
        IF jsonb_array_length(dim->'choices') > 1000 THEN
            PERFORM sfq_reject_study(label || '.choices', 'has more than 1000 values');
        END IF;
        IF (SELECT count(DISTINCT c) FROM jsonb_array_elements(dim->'choices') c) < jsonb_array_length(dim->'choices') THEN
            PERFORM sfq_reject_study(label || '.choices', 'has the same value twice');
        END IF;
        points := jsonb_array_length(dim->'choices');
        FOR v IN SELECT c FROM jsonb_array_elements(dim->'choices') c LOOP
            IF name = 'algorithm' THEN
                PERFORM sfq_check_study_value(base, name, v, label || '.choices');
            ELSE
                FOREACH a IN ARRAY algorithms LOOP
                    PERFORM sfq_check_study_value(base, name, v, label || '.choices', a);
                END LOOP;
            END IF;
        END LOOP;
    ELSIF kind = 'subset' THEN
        IF name NOT IN ('features', 'context_symbols') THEN
            PERFORM sfq_reject_study(label || '.type', 'subset is for features and context_symbols');
        END IF;
        IF jsonb_typeof(dim->'of') IS DISTINCT FROM 'array' OR jsonb_array_length(dim->'of') = 0
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(dim->'of') e WHERE jsonb_typeof(e) <> 'string') THEN
            PERFORM sfq_reject_study(label || '.of', 'must be a non-empty array of names');
        END IF;
        IF jsonb_array_length(dim->'of') > 64 THEN
            PERFORM sfq_reject_study(label || '.of', 'has more than 64 names');
        END IF;
        IF dim ? 'min_size' AND (jsonb_typeof(dim->'min_size') IS DISTINCT FROM 'number'
                                 OR (dim->>'min_size')::numeric NOT BETWEEN 0 AND jsonb_array_length(dim->'of')) THEN
            PERFORM sfq_reject_study(label || '.min_size', 'must be between 0 and the number of names');
        END IF;
        points := 2 ^ jsonb_array_length(dim->'of');
        FOREACH a IN ARRAY algorithms LOOP
            PERFORM sfq_check_study_value(base, name, dim->'of', label || '.of', a);
        END LOOP;
    ELSE
        PERFORM sfq_reject_study(label || '.type', format('must be int, float, categorical or subset, got %s',
                                                          coalesce(dim->'type', 'nothing')));
    END IF;
    RETURN points;
END;
$$;

-- A study's integer field between low and high, or NULL when it is absent or null.
CREATE OR REPLACE FUNCTION sfq_study_integer(study jsonb, field text, low bigint, high bigint) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    value jsonb := study->field;
BEGIN
    IF value IS NULL OR value = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'number' OR value::text::numeric <> trunc(value::text::numeric)
       OR value::text::numeric NOT BETWEEN low AND high THEN
        PERFORM sfq_reject_study(field, format('must be an integer from %s to %s, got %s', low, high, value));
    END IF;
    RETURN value::text::integer;
END;
$$;

-- POST /studies, `sfq study create`, and other services: check a study, then record it and defer its
-- first advance. Every error names its field; nothing is created unless the whole study is valid.
CREATE OR REPLACE FUNCTION sfq_create_study(study jsonb, via text DEFAULT 'sql') RETURNS studies
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    allowed text[] := ARRAY['name', 'base', 'space', 'objective', 'direction', 'sampler', 'pruner', 'n_trials',
                            'cpu_seconds', 'max_parallel', 'priority', 'seed'];
    base jsonb;
    space jsonb;
    objectives text[];
    directions text[];
    sampler_ text;
    sampler_traits jsonb;
    pruner_ text;
    grid_points numeric := 1;
    points numeric;
    key text;
    dim jsonb;
    o text;
    n_trials_ integer;
    max_parallel_ integer;
    priority_ integer;
    seed_ integer;
    created studies;
BEGIN
    IF jsonb_typeof(study) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject_study('study', 'must be a JSON object');
    END IF;
    SELECT k INTO key FROM jsonb_object_keys(study) k WHERE k <> ALL (allowed) LIMIT 1;
    IF key IS NOT NULL THEN
        PERFORM sfq_reject_study(key, format('is not a study field; valid: %s', array_to_string(allowed, ', ')));
    END IF;

    -- The base request, then each dimension of the space against it.
    base := coalesce(study->'base', '{}');
    IF jsonb_typeof(base) <> 'object' THEN
        PERFORM sfq_reject_study('base', 'must be a request object');
    END IF;
    IF base ?| ARRAY['parent_model_id', 'retrain_of', 'priority'] THEN
        PERFORM sfq_reject_study('base', 'parent_model_id, retrain_of and priority are not part of a study''s base');
    END IF;
    PERFORM sfq_check_study_value(base, NULL, NULL, 'base');
    base := sfq_check_request_json(base);
    space := study->'space';
    IF jsonb_typeof(space) IS DISTINCT FROM 'object' OR space = '{}' THEN
        PERFORM sfq_reject_study('space', 'must be a non-empty object of field: dimension');
    END IF;

    -- The objective(s): cross-validation metrics only; each one's direction (its own by default).
    objectives := ARRAY(SELECT jsonb_array_elements_text(CASE jsonb_typeof(study->'objective')
        WHEN 'array' THEN study->'objective' WHEN 'string' THEN jsonb_build_array(study->'objective') END));
    IF cardinality(objectives) = 0 THEN
        PERFORM sfq_reject_study('objective', format('is required: one or more of %s',
            (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(sfq_study_objectives()) k)));
    END IF;
    FOREACH o IN ARRAY objectives LOOP
        IF NOT sfq_study_objectives() ? o THEN
            PERFORM sfq_reject_study('objective', format('%s is not a cross-validation metric%s; valid: %s', o,
                CASE WHEN o ~ '^(test_|backtest|lockbox)' OR o IN ('ic', 'r2', 'rmse', 'mae', 'directional_accuracy')
                     THEN ' (the held-out test window''s metrics stay out of the search, for the final, honest look at the winner)'
                     ELSE '' END,
                (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(sfq_study_objectives()) k)));
        END IF;
    END LOOP;
    IF (SELECT count(DISTINCT x) FROM unnest(objectives) x) < cardinality(objectives) THEN
        PERFORM sfq_reject_study('objective', 'names the same metric twice');
    END IF;
    IF study->'direction' IS NULL OR study->'direction' = 'null' THEN
        directions := ARRAY(SELECT sfq_study_objectives()->>x FROM unnest(objectives) x);
    ELSE
        directions := ARRAY(SELECT jsonb_array_elements_text(CASE jsonb_typeof(study->'direction')
            WHEN 'array' THEN study->'direction' WHEN 'string' THEN jsonb_build_array(study->'direction') END));
        IF cardinality(directions) <> cardinality(objectives)
           OR EXISTS (SELECT 1 FROM unnest(directions) d WHERE d NOT IN ('maximize', 'minimize')) THEN
            PERFORM sfq_reject_study('direction', 'must be maximize or minimize, one per objective');
        END IF;
    END IF;

    sampler_ := coalesce(study->>'sampler', 'tpe');
    sampler_traits := sfq_study_samplers()->sampler_;
    IF sampler_traits IS NULL THEN
        PERFORM sfq_reject_study('sampler', format('must be one of %s, got %s',
            (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(sfq_study_samplers()) k), sampler_));
    END IF;
    IF cardinality(objectives) > 1 AND NOT (sampler_traits->>'multi_objective')::boolean THEN
        PERFORM sfq_reject_study('sampler', format('%s optimises one objective; for several use one of %s', sampler_,
            (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_each(sfq_study_samplers()) e(k, v)
              WHERE (v->>'multi_objective')::boolean)));
    END IF;
    pruner_ := coalesce(study->>'pruner', CASE WHEN cardinality(objectives) = 1 THEN 'median' ELSE 'none' END);
    IF NOT pruner_ = ANY (sfq_study_pruners()) THEN
        PERFORM sfq_reject_study('pruner', format('must be one of %s, got %s',
                                                  array_to_string(sfq_study_pruners(), ', '), pruner_));
    END IF;
    IF pruner_ <> 'none' AND cardinality(objectives) > 1 THEN
        PERFORM sfq_reject_study('pruner', 'pruning compares one value per fold: with several objectives use none');
    END IF;

    FOR key, dim IN SELECT e.key, e.value FROM jsonb_each(space) e ORDER BY 1 LOOP
        points := sfq_check_study_dimension(base, space, key, dim);
        IF (sampler_traits->>'discrete')::boolean THEN
            IF points IS NULL THEN
                PERFORM sfq_reject_study('space.' || key, format('the %s sampler needs a discrete dimension '
                    '(int, categorical, subset, or float with a step)', sampler_));
            END IF;
            IF dim ? 'when' THEN
                PERFORM sfq_reject_study('space.' || key || '.when', format('the %s sampler cannot search a '
                    'conditional dimension', sampler_));
            END IF;
            grid_points := grid_points * points;
        END IF;
    END LOOP;
    IF (sampler_traits->>'discrete')::boolean AND grid_points > 100000 THEN
        PERFORM sfq_reject_study('space', format('has %s grid points; a grid may have at most 100000', grid_points));
    END IF;

    n_trials_ := sfq_study_integer(study, 'n_trials', 1, 100000);
    IF study ? 'cpu_seconds' AND study->'cpu_seconds' <> 'null' AND (jsonb_typeof(study->'cpu_seconds') <> 'number'
       OR (study->>'cpu_seconds')::numeric <= 0) THEN
        PERFORM sfq_reject_study('cpu_seconds', 'must be a positive number of core-seconds');
    END IF;
    IF n_trials_ IS NULL AND coalesce(study->'cpu_seconds', 'null') = 'null' THEN
        IF NOT (sampler_traits->>'discrete')::boolean THEN
            PERFORM sfq_reject_study('n_trials', 'a study needs a budget: n_trials, cpu_seconds or both');
        END IF;
        n_trials_ := grid_points;  -- a grid's budget: every point
    END IF;
    max_parallel_ := sfq_study_integer(study, 'max_parallel', 1, 10000);  -- null: every idle worker
    priority_ := coalesce(sfq_study_integer(study, 'priority', -100, 100), -10);
    seed_ := coalesce(sfq_study_integer(study, 'seed', 0, 2147483647), 0);
    IF study ? 'name' AND study->'name' <> 'null' AND (jsonb_typeof(study->'name') <> 'string'
       OR length(study->>'name') > 200) THEN
        PERFORM sfq_reject_study('name', 'must be a string of at most 200 characters');
    END IF;

    INSERT INTO studies (via, name, base, space, objectives, directions, sampler, pruner, n_trials, cpu_seconds,
                         max_parallel, priority, seed)
    VALUES (via, study->>'name', base, space, objectives, directions, sampler_, pruner_, n_trials_,
            (study->>'cpu_seconds')::double precision, max_parallel_, priority_, seed_)
    RETURNING * INTO created;
    PERFORM sfq_defer_study_advance(created.id);
    RETURN created;
END;
$$;

-- Ask for the study's next advance (tell Optuna how ended trials went, ask for trials). Every caller defers
-- its own job, committed with its change: a job already queued may have been taken before that change
-- committed, and would not see it (a queueing lock lost a trial's end that way, and the study waited
-- forever). The lock runs a study's advances one at a time, in order; one with nothing new is a no-op.
CREATE OR REPLACE FUNCTION sfq_defer_study_advance(study bigint) RETURNS bigint
    LANGUAGE sql AS $$
    SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(
        'study', 'advance_study', 0, 'study:' || study, NULL, jsonb_build_object('study_id', study), NULL
    )::procrastinate_job_to_defer_v1]))[1]
$$;

-- A trial's model ended (completed, failed, cancelled or pruned): its study advances (tells, and asks while it
-- runs), in this transaction; a stopped or ended study's last trials are told too.
CREATE OR REPLACE FUNCTION sfq_study_trial_ended() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    study bigint;
BEGIN
    FOR study IN SELECT DISTINCT t.study_id FROM study_trials t
                  WHERE t.model_id = NEW.id AND t.state = 'running' LOOP
        PERFORM sfq_defer_study_advance(study);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER models_study_trial_ended AFTER UPDATE OF status ON models
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION sfq_study_trial_ended();

-- A study's trial, submitted by the worker that advances it: the only request a worker may make, and only
-- for a running study.
CREATE OR REPLACE FUNCTION sfq_submit_trial(study bigint, request jsonb) RETURNS training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM studies s WHERE s.id = study AND s.state = 'running') THEN
        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('study %s is not running', study);
    END IF;
    RETURN sfq_submit(request, 'study ' || study);
END;
$$;

-- POST /studies/{id}/stop: ask for no more trials; those running finish and are recorded. 404 when there
-- is no such study; a finished study stays as it ended.
CREATE OR REPLACE FUNCTION sfq_stop_study(study bigint) RETURNS studies
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    s studies;
BEGIN
    UPDATE studies SET state = 'stopped', reason = 'stopped on request', finished_at = now()
     WHERE id = study AND state = 'running' RETURNING * INTO s;
    IF NOT FOUND THEN
        SELECT * INTO s FROM studies WHERE id = study;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no study with id %s', study);
        END IF;
    END IF;
    RETURN s;
END;
$$;
