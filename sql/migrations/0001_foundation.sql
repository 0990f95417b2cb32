-- sfq foundation: bars, models and their results, and the one way in: INSERT INTO training_requests.
--
-- Every request (HTTP, CLI or another service's plain INSERT) becomes a row of training_requests. A
-- BEFORE INSERT trigger validates it, fills in defaults, computes the SHA-256 fingerprint of the
-- canonical spec, creates the model (or finds the live model with that fingerprint) and defers its
-- Procrastinate job, all in the caller's transaction: a ROLLBACK leaves neither model nor job.

-- Registries, written by sql/registry.sql (generated from the workers' registries).
CREATE TABLE sfq_algorithms (
    name text PRIMARY KEY,
    hyperparameters jsonb NOT NULL  -- {param: {default, rules: [...], expects}}
);

CREATE TABLE sfq_features (
    name text PRIMARY KEY,
    description text NOT NULL,
    is_default boolean NOT NULL,
    position integer NOT NULL
);

CREATE TABLE bars (
    symbol text NOT NULL,
    timeframe text NOT NULL,
    ts timestamptz NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts),
    CONSTRAINT bars_prices_positive CHECK (open > 0 AND high > 0 AND low > 0 AND close > 0),
    CONSTRAINT bars_high_low CHECK (high >= greatest(open, close, low) AND low <= least(open, close)),
    CONSTRAINT bars_volume_non_negative CHECK (volume >= 0)
);

CREATE TYPE sfq_model_status AS ENUM ('queued', 'running', 'completed', 'failed', 'cancelled');

CREATE TABLE models (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL,
    spec jsonb NOT NULL,  -- the canonical spec that was hashed into the fingerprint
    symbol text NOT NULL,
    timeframe text NOT NULL,
    target_col text NOT NULL,
    target_transform text NOT NULL,
    horizon integer NOT NULL,
    algorithm text NOT NULL,
    hyperparameters jsonb NOT NULL,
    features text[] NOT NULL,
    train_window integer NOT NULL,
    test_window integer NOT NULL,
    data_end timestamptz,  -- NULL only when the symbol had no bars at enqueue time
    cv_folds integer NOT NULL,
    cv_strategy text NOT NULL,
    context_symbols text[] NOT NULL,
    alpha_grid double precision[] NOT NULL,
    l1_ratio_grid double precision[] NOT NULL,
    regime_configs jsonb NOT NULL,
    parent_model_id bigint REFERENCES models (id),
    status sfq_model_status NOT NULL DEFAULT 'queued',
    error text,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    worker_host text,
    worker_pid integer,
    attempts integer NOT NULL DEFAULT 0,
    metrics jsonb,       -- held-out test window: rmse, mae, r2, directional_accuracy, ic, ...
    fold_metrics jsonb,  -- one object per CV fold
    timings jsonb,       -- seconds per phase of the last attempt
    timeout_s integer,   -- training deadline; NULL = the worker's default (not part of the fingerprint)
    job_id bigint
);

-- One live model per fingerprint; a failed or cancelled model may be submitted again.
CREATE UNIQUE INDEX models_fingerprint_live ON models (fingerprint)
    WHERE status NOT IN ('failed', 'cancelled');
CREATE INDEX models_fingerprint ON models (fingerprint);
CREATE INDEX models_status ON models (status);
CREATE INDEX models_symbol ON models (symbol);
CREATE INDEX models_algorithm ON models (algorithm);
CREATE INDEX models_parent ON models (parent_model_id) WHERE parent_model_id IS NOT NULL;

CREATE TABLE features_log (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    feature text NOT NULL,
    importance double precision NOT NULL,
    rank integer NOT NULL,
    method text NOT NULL,  -- impurity, abs_coefficient or permutation
    PRIMARY KEY (model_id, feature)
);

CREATE TABLE model_predictions (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    ts timestamptz NOT NULL,
    predicted double precision NOT NULL,
    actual double precision NOT NULL,
    PRIMARY KEY (model_id, ts)
);

CREATE TABLE model_artifacts (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    format text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    bytes bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The way in. Columns are the spec's fields; unset columns take these defaults.
CREATE TABLE training_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    via text NOT NULL DEFAULT 'sql',
    symbol text,
    timeframe text DEFAULT '1d',
    target_col text DEFAULT 'close',
    target_transform text DEFAULT 'log_return',
    horizon integer DEFAULT 1,
    algorithm text DEFAULT 'RandomForest',
    hyperparameters jsonb DEFAULT '{}',
    features text[],
    train_window integer DEFAULT 1000,
    test_window integer DEFAULT 250,
    data_end timestamptz,
    cv_folds integer DEFAULT 5,
    cv_strategy text DEFAULT 'expanding',
    context_symbols text[] DEFAULT '{}',
    alpha_grid double precision[] DEFAULT '{}',
    l1_ratio_grid double precision[] DEFAULT '{}',
    regime_configs jsonb DEFAULT '[]',
    parent_model_id bigint,
    timeout_s integer,
    model_id bigint,
    fingerprint text,
    deduplicated boolean
);

COMMENT ON COLUMN training_requests.symbol IS 'Ticker whose bars the model trains on (required).';
COMMENT ON COLUMN training_requests.timeframe IS 'Bar timeframe, e.g. 1d, 1h, 5m.';
COMMENT ON COLUMN training_requests.target_col IS 'Price predicted: open, high, low or close.';
COMMENT ON COLUMN training_requests.target_transform IS
    'log_return, pct_change, diff (target_col at t+horizon against the close at t) or raw (the level).';
COMMENT ON COLUMN training_requests.horizon IS 'Bars ahead the target looks.';
COMMENT ON COLUMN training_requests.algorithm IS 'Estimator from the algorithm registry (sfq_algorithms).';
COMMENT ON COLUMN training_requests.hyperparameters IS
    'JSON object of estimator parameters, checked against the estimator''s own constraints.';
COMMENT ON COLUMN training_requests.features IS 'Feature names from sfq_features; NULL means the default set.';
COMMENT ON COLUMN training_requests.train_window IS 'Bars in the training window (CV runs inside it).';
COMMENT ON COLUMN training_requests.test_window IS 'Last bars held out for scoring.';
COMMENT ON COLUMN training_requests.data_end IS
    'Last bar the model may see; NULL means the latest bar at enqueue time. Part of the fingerprint.';
COMMENT ON COLUMN training_requests.cv_folds IS 'Number of time-series CV folds.';
COMMENT ON COLUMN training_requests.cv_strategy IS 'expanding (rolling comes later).';
COMMENT ON COLUMN training_requests.context_symbols IS 'Other symbols whose bars feed features (later).';
COMMENT ON COLUMN training_requests.alpha_grid IS 'Alpha values to search (later).';
COMMENT ON COLUMN training_requests.l1_ratio_grid IS 'l1_ratio values to search (later).';
COMMENT ON COLUMN training_requests.regime_configs IS 'JSON array of regime configurations (later).';
COMMENT ON COLUMN training_requests.parent_model_id IS 'Model this one evolves from (not part of the fingerprint).';
COMMENT ON COLUMN training_requests.timeout_s IS
    'Seconds before training is killed and the model fails; NULL = the workers'' default (not fingerprinted).';

-- Raise a request error that names its field, both in the message and in the error's COLUMN field.
CREATE FUNCTION sfq_reject(field text, problem text, code text DEFAULT '22023') RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = code,
        MESSAGE = format('invalid training request: %s: %s', field, problem),
        COLUMN = field;
END;
$$;

CREATE FUNCTION sfq_not_supported_yet(field text, what text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sfq_reject(field, what || ' is not supported yet; leave it empty', '0A000');
END;
$$;

-- Does a JSON value satisfy one rule of the hyperparameter contract?
CREATE FUNCTION sfq_rule_matches(value jsonb, rule jsonb) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    kind text := jsonb_typeof(value);
    number numeric;
BEGIN
    CASE rule->>'type'
        WHEN 'null' THEN RETURN kind = 'null';
        WHEN 'boolean' THEN RETURN kind = 'boolean';
        WHEN 'string' THEN
            RETURN kind = 'string' AND (NOT rule ? 'enum' OR rule->'enum' @> jsonb_build_array(value));
        WHEN 'integer', 'number' THEN
            IF kind <> 'number' THEN RETURN false; END IF;
            number := value::numeric;
            IF abs(number) > 1e15 THEN RETURN false; END IF;  -- beyond what a float64 holds exactly
            IF rule->>'type' = 'integer' AND number <> trunc(number) THEN RETURN false; END IF;
            -- scikit-learn's RealNotInt: 1 and 1.0 mean different things there, so only 1.0 is a float.
            IF (rule->>'not_integer')::boolean AND scale(number) = 0 THEN RETURN false; END IF;
            IF rule ? 'min' AND (number < (rule->>'min')::numeric
                OR ((rule->>'min_open')::boolean AND number = (rule->>'min')::numeric)) THEN
                RETURN false;
            END IF;
            IF rule ? 'max' AND (number > (rule->>'max')::numeric
                OR ((rule->>'max_open')::boolean AND number = (rule->>'max')::numeric)) THEN
                RETURN false;
            END IF;
            RETURN true;
        ELSE RETURN false;
    END CASE;
END;
$$;

-- The canonical form of one hyperparameter value: integers without a decimal point, floats with one,
-- so that 1 and 1.0 hash alike where they mean the same and apart where they do not (max_features).
-- A number written with a decimal point tries the float rules first.
CREATE FUNCTION sfq_canonical_value(algorithm text, param text, value jsonb, contract jsonb) RETURNS jsonb
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
    PERFORM sfq_reject(
        'hyperparameters.' || param,
        format('%s is not valid for %s (expected %s)', value, algorithm, contract->>'expects')
    );
    RETURN NULL;
END;
$$;

-- Every parameter of the algorithm with its canonical value: the defaults overlaid with the request's.
CREATE FUNCTION sfq_canonical_hyperparameters(algorithm text, given jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    contracts jsonb;
    param text;
    canonical jsonb := '{}';
BEGIN
    SELECT a.hyperparameters INTO contracts FROM sfq_algorithms a WHERE a.name = algorithm;
    IF jsonb_typeof(given) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject('hyperparameters', format('must be a JSON object, got %s', given));
    END IF;
    FOR param IN SELECT jsonb_object_keys(given) LOOP
        IF NOT contracts ? param THEN
            PERFORM sfq_reject(
                'hyperparameters.' || param,
                format('unknown parameter for %s; valid: %s', algorithm,
                       (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(contracts) AS k))
            );
        END IF;
    END LOOP;
    -- Defaults are taken as scikit-learn states them (already canonical: 1.0 for a float, 1 for an int).
    FOR param IN SELECT jsonb_object_keys(contracts) LOOP
        canonical := canonical || jsonb_build_object(
            param,
            CASE WHEN given ? param THEN sfq_canonical_value(algorithm, param, given->param, contracts->param)
                 ELSE contracts->param->'default' END
        );
    END LOOP;
    RETURN canonical;
END;
$$;

CREATE FUNCTION sfq_require(field text, value anyelement) RETURNS anyelement
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        PERFORM sfq_reject(field, 'must not be null');
    END IF;
    RETURN value;
END;
$$;

CREATE FUNCTION sfq_check_range(field text, value integer, low integer, high integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF sfq_require(field, value) NOT BETWEEN low AND high THEN
        PERFORM sfq_reject(field, format('must be between %s and %s, got %s', low, high, value));
    END IF;
END;
$$;

CREATE FUNCTION sfq_check_choice(field text, value text, choices text[]) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT sfq_require(field, value) = ANY (choices) THEN
        PERFORM sfq_reject(field, format('%L is not one of %s', value, array_to_string(choices, ', ')));
    END IF;
END;
$$;

-- Timestamps enter the fingerprint in UTC, whatever the client's TimeZone setting.
CREATE FUNCTION sfq_utc_text(ts timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A model's training job. Only the job recorded in models.job_id may run the model (start_model checks).
CREATE FUNCTION sfq_defer_training(model bigint) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    job_ids bigint[];
BEGIN
    job_ids := procrastinate_defer_jobs_v1(ARRAY[ROW(
        'training', 'train_model', 0, 'model:' || model, NULL, jsonb_build_object('model_id', model), NULL
    )::procrastinate_job_to_defer_v1]);
    UPDATE models SET job_id = job_ids[1] WHERE id = model;
    RETURN job_ids[1];
END;
$$;

CREATE FUNCTION sfq_accept_training_request() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    unknown text[];
    spec jsonb;
BEGIN
    NEW.symbol := upper(btrim(sfq_require('symbol', NEW.symbol)));
    IF NEW.symbol !~ '^[A-Z0-9][A-Z0-9._:^=-]{0,31}$' THEN
        PERFORM sfq_reject('symbol', format('%L is not a ticker (letters, digits and ._:^=-, at most 32)',
                                            NEW.symbol));
    END IF;
    IF sfq_require('timeframe', NEW.timeframe) !~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' THEN
        PERFORM sfq_reject('timeframe', format('%L is not a timeframe such as 1d, 1h or 5m', NEW.timeframe));
    END IF;
    PERFORM sfq_check_choice('target_col', NEW.target_col, '{open,high,low,close}');
    PERFORM sfq_check_choice('target_transform', NEW.target_transform, '{log_return,pct_change,diff,raw}');
    PERFORM sfq_check_range('horizon', NEW.horizon, 1, 1000);
    PERFORM sfq_check_range('cv_folds', NEW.cv_folds, 2, 50);
    PERFORM sfq_check_range('train_window', NEW.train_window, 50, 1000000);
    PERFORM sfq_check_range('test_window', NEW.test_window, 10, 1000000);
    IF NEW.train_window < (NEW.cv_folds + 1) * (NEW.horizon + 10) THEN
        PERFORM sfq_reject('train_window', format(
            'must hold at least (cv_folds + 1) x (horizon + 10) = %s bars for %s folds, got %s',
            (NEW.cv_folds + 1) * (NEW.horizon + 10), NEW.cv_folds, NEW.train_window));
    END IF;
    PERFORM sfq_check_choice('cv_strategy', NEW.cv_strategy, '{expanding,rolling}');
    IF NEW.cv_strategy <> 'expanding' THEN
        PERFORM sfq_not_supported_yet('cv_strategy', format('cv_strategy %L', NEW.cv_strategy));
    END IF;

    IF NOT EXISTS (SELECT 1 FROM sfq_algorithms WHERE name = sfq_require('algorithm', NEW.algorithm)) THEN
        PERFORM sfq_reject('algorithm', format('%L is not one of %s', NEW.algorithm,
                           (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_algorithms)));
    END IF;
    NEW.hyperparameters := sfq_canonical_hyperparameters(NEW.algorithm, coalesce(NEW.hyperparameters, '{}'));

    IF NEW.features IS NULL THEN
        NEW.features := ARRAY(SELECT name FROM sfq_features WHERE is_default ORDER BY name);
    ELSE
        IF cardinality(NEW.features) = 0 THEN
            PERFORM sfq_reject('features', 'must name at least one feature (NULL means the default set)');
        END IF;
        unknown := ARRAY(SELECT f FROM unnest(NEW.features) f WHERE f IS NULL OR f NOT IN (SELECT name FROM sfq_features));
        IF cardinality(unknown) > 0 THEN
            PERFORM sfq_reject('features', format('unknown %s; valid: %s', array_to_string(unknown, ', ', 'NULL'),
                               (SELECT string_agg(name, ', ' ORDER BY position) FROM sfq_features)));
        END IF;
        NEW.features := ARRAY(SELECT DISTINCT f FROM unnest(NEW.features) f ORDER BY f);
    END IF;

    NEW.context_symbols := ARRAY(SELECT DISTINCT upper(btrim(s)) FROM unnest(sfq_require('context_symbols',
                                 NEW.context_symbols)) s ORDER BY 1);
    NEW.alpha_grid := ARRAY(SELECT DISTINCT a FROM unnest(sfq_require('alpha_grid', NEW.alpha_grid)) a ORDER BY 1);
    NEW.l1_ratio_grid := ARRAY(SELECT DISTINCT r FROM unnest(sfq_require('l1_ratio_grid', NEW.l1_ratio_grid)) r
                               ORDER BY 1);
    IF jsonb_typeof(sfq_require('regime_configs', NEW.regime_configs)) <> 'array' THEN
        PERFORM sfq_reject('regime_configs', format('must be a JSON array, got %s', NEW.regime_configs));
    END IF;
    NEW.regime_configs := coalesce((SELECT jsonb_agg(c ORDER BY c::text) FROM jsonb_array_elements(NEW.regime_configs) c),
                                   '[]');
    IF cardinality(NEW.context_symbols) > 0 THEN
        PERFORM sfq_not_supported_yet('context_symbols', 'training with context symbols');
    END IF;
    IF cardinality(NEW.alpha_grid) > 0 THEN
        PERFORM sfq_not_supported_yet('alpha_grid', 'an alpha grid search');
    END IF;
    IF cardinality(NEW.l1_ratio_grid) > 0 THEN
        PERFORM sfq_not_supported_yet('l1_ratio_grid', 'an l1_ratio grid search');
    END IF;
    IF jsonb_array_length(NEW.regime_configs) > 0 THEN
        PERFORM sfq_not_supported_yet('regime_configs', 'training per regime');
    END IF;
    IF NEW.timeout_s IS NOT NULL THEN
        PERFORM sfq_check_range('timeout_s', NEW.timeout_s, 1, 604800);
    END IF;
    IF NEW.parent_model_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM models WHERE id = NEW.parent_model_id) THEN
        PERFORM sfq_reject('parent_model_id', format('no model with id %s', NEW.parent_model_id));
    END IF;

    IF NEW.data_end IS NOT NULL AND NOT NEW.data_end BETWEEN '1800-01-01Z' AND '2200-01-01Z' THEN
        PERFORM sfq_reject('data_end', format('%s is not a date between 1800 and 2200', NEW.data_end));
    END IF;
    -- Pin the data: the last bar at or before the requested end (the latest bar by default).
    NEW.data_end := coalesce(
        (SELECT max(ts) FROM bars
          WHERE symbol = NEW.symbol AND timeframe = NEW.timeframe
            AND (NEW.data_end IS NULL OR ts <= NEW.data_end)),
        NEW.data_end);

    spec := jsonb_build_object(
        'spec_version', 1,
        'symbol', NEW.symbol, 'timeframe', NEW.timeframe,
        'target_col', NEW.target_col, 'target_transform', NEW.target_transform, 'horizon', NEW.horizon,
        'algorithm', NEW.algorithm, 'hyperparameters', NEW.hyperparameters, 'features', to_jsonb(NEW.features),
        'train_window', NEW.train_window, 'test_window', NEW.test_window,
        'data_end', sfq_utc_text(NEW.data_end),
        'cv_folds', NEW.cv_folds, 'cv_strategy', NEW.cv_strategy,
        'context_symbols', to_jsonb(NEW.context_symbols),
        'alpha_grid', to_jsonb(NEW.alpha_grid), 'l1_ratio_grid', to_jsonb(NEW.l1_ratio_grid),
        'regime_configs', NEW.regime_configs
    );
    NEW.fingerprint := encode(sha256(convert_to(spec::text, 'UTF8')), 'hex');

    LOOP
        INSERT INTO models (
            fingerprint, spec, symbol, timeframe, target_col, target_transform, horizon, algorithm,
            hyperparameters, features, train_window, test_window, data_end, cv_folds, cv_strategy,
            context_symbols, alpha_grid, l1_ratio_grid, regime_configs, parent_model_id, timeout_s)
        VALUES (
            NEW.fingerprint, spec, NEW.symbol, NEW.timeframe, NEW.target_col, NEW.target_transform,
            NEW.horizon, NEW.algorithm, NEW.hyperparameters, NEW.features, NEW.train_window,
            NEW.test_window, NEW.data_end, NEW.cv_folds, NEW.cv_strategy, NEW.context_symbols,
            NEW.alpha_grid, NEW.l1_ratio_grid, NEW.regime_configs, NEW.parent_model_id, NEW.timeout_s)
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

CREATE TRIGGER training_requests_accept BEFORE INSERT ON training_requests
    FOR EACH ROW EXECUTE FUNCTION sfq_accept_training_request();

-- The columns of training_requests a request may set (the others are filled in by the trigger).
CREATE FUNCTION sfq_request_fields() RETURNS SETOF pg_attribute
    LANGUAGE sql STABLE AS $$
    SELECT * FROM pg_attribute
     WHERE attrelid = 'training_requests'::regclass AND attnum > 0 AND NOT attisdropped
       AND attname NOT IN ('id', 'received_at', 'via', 'model_id', 'fingerprint', 'deduplicated')
$$;

-- The JSON way in, used by the HTTP API and the CLI: the same INSERT, after checking each field's
-- JSON type so that a wrong type is reported with its field's name. JSON null means "the default".
CREATE FUNCTION sfq_submit(request jsonb, via text DEFAULT 'sql') RETURNS training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    field text;
    value jsonb;
    column_type text;
    expected text;
    wrong boolean;
    columns text := '';
    accepted training_requests;
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
        columns := columns || ', ' || quote_ident(field);
    END LOOP;
    EXECUTE format(
        'INSERT INTO training_requests (via%s) SELECT $2%s FROM jsonb_populate_record(NULL::training_requests, $1) '
        'RETURNING *', columns, columns)
        INTO accepted USING request, via;
    RETURN accepted;
END;
$$;
