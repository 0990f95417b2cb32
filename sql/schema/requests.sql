-- sfq/requests: a training request's validation, canonical form and fingerprint (sfq_canonical_request),
-- the JSON way in (sfq_submit), and the training_requests triggers that turn each accepted request into
-- its model (models.sql: sfq_new_model, sfq_insert_models) and the statement's new models into their
-- training jobs (queue.sql: sfq_defer_training).
--
-- Repeatable: applied by `sfq db upgrade` after the migrations, with search_path set to sfq's schema then
-- pg_temp, which the SECURITY DEFINER functions keep (SET search_path FROM CURRENT). The vocabulary the
-- checks share with the workers (target columns and transforms, CV strategies, timeframe, window rule)
-- comes from registry.sql, generated from the workers' Python.

-- ---------------------------------------------------------------------------------------------------
-- Checks and their errors.

-- Raise a request error that names its field, both in the message and in the error's COLUMN field.
CREATE OR REPLACE FUNCTION sfq_reject(field text, problem text, code text DEFAULT '22023') RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = code,
        MESSAGE = format('invalid training request: %s: %s', field, problem),
        COLUMN = field;
END;
$$;

-- A required field.
CREATE OR REPLACE FUNCTION sfq_require(field text, value anyelement) RETURNS anyelement
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        PERFORM sfq_reject(field, 'must not be null');
    END IF;
    RETURN value;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_check_range(field text, value integer, low integer, high integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF sfq_require(field, value) NOT BETWEEN low AND high THEN
        PERFORM sfq_reject(field, format('must be between %s and %s, got %s', low, high, value));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION sfq_check_choice(field text, value text, choices text[]) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT sfq_require(field, value) = ANY (choices) THEN
        PERFORM sfq_reject(field, format('%L is not one of %s', value, array_to_string(choices, ', ')));
    END IF;
END;
$$;

-- Does a JSON value satisfy one rule of the hyperparameter contract?
CREATE OR REPLACE FUNCTION sfq_rule_matches(value jsonb, rule jsonb) RETURNS boolean
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

-- Timestamps enter the fingerprint in UTC, whatever the client's TimeZone setting. STABLE, as to_char is:
-- declared IMMUTABLE it was never inlined, and each call ran its query on its own.
CREATE OR REPLACE FUNCTION sfq_utc_text(ts timestamptz) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- ---------------------------------------------------------------------------------------------------
-- Canonical form.

-- One parameter value against its contract ({default, rules, expects}); `field` names it in errors.
-- Integers without a decimal point, floats with one, so that 1 and 1.0 hash alike where they mean the
-- same and apart where they do not (max_features). A number written with a point tries float rules
-- first; a contract of one rule (most) has no rules to order.
CREATE OR REPLACE FUNCTION sfq_canonical_param(field text, owner text, value jsonb, contract jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    rules jsonb[];
    rule jsonb;
    number numeric;
BEGIN
    IF jsonb_typeof(value) = 'number' THEN
        number := value::numeric;
    END IF;
    IF jsonb_array_length(contract->'rules') = 1 THEN
        rules := ARRAY[contract->'rules'->0];
    ELSIF number IS NULL THEN
        rules := ARRAY(SELECT jsonb_array_elements(contract->'rules'));
    ELSE
        -- A number written with a point tries the float rules first.
        rules := ARRAY(SELECT r FROM jsonb_array_elements(contract->'rules') WITH ORDINALITY AS t(r, i)
                        ORDER BY (r->>'type' = 'integer') = (scale(number) > 0), i);
    END IF;
    FOREACH rule IN ARRAY rules LOOP
        IF sfq_rule_matches(value, rule) THEN
            IF number IS NULL THEN
                RETURN value;
            ELSIF rule->>'type' = 'integer' THEN
                RETURN to_jsonb(trunc(number));
            END IF;
            RETURN to_jsonb(round(number, greatest(scale(trim_scale(number)), 1)));
        END IF;
    END LOOP;
    PERFORM sfq_reject(field, format('%s is not valid for %s (expected %s)', value, owner, contract->>'expects'));
    RETURN NULL;
END;
$$;

-- A parameter object against its contracts: unknown names refused (the first, in the object's key
-- order), every parameter present (defaults filled in), each value canonical.
CREATE OR REPLACE FUNCTION sfq_canonical_params(field text, owner text, given jsonb, contracts jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    unknown text;
BEGIN
    SELECT k INTO unknown FROM jsonb_object_keys(given) WITH ORDINALITY AS g(k, i) WHERE NOT contracts ? k
     ORDER BY i LIMIT 1;
    IF unknown IS NOT NULL THEN
        PERFORM sfq_reject(field || '.' || unknown, format('unknown parameter for %s; valid: %s', owner,
            (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(contracts) AS k)));
    END IF;
    RETURN coalesce((
        SELECT jsonb_object_agg(param,
                   CASE WHEN given ? param
                        THEN sfq_canonical_param(field || '.' || param, owner, given->param, contract)
                        ELSE contract->'default' END)
          FROM jsonb_each(contracts) AS c(param, contract)), '{}');
END;
$$;

-- An algorithm's hyperparameters, canonical (a sweep canonicalises each distinct set once with it).
CREATE OR REPLACE FUNCTION sfq_canonical_hyperparameters(algorithm text, given jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF jsonb_typeof(given) IS DISTINCT FROM 'object' THEN
        PERFORM sfq_reject('hyperparameters', format('must be a JSON object, got %s', given));
    END IF;
    RETURN sfq_canonical_params('hyperparameters', algorithm, given,
                                sfq_algorithm_contracts()->algorithm);
END;
$$;

-- A grid of values for one hyperparameter: each value valid for it, finite, sorted, de-duplicated.
CREATE OR REPLACE FUNCTION sfq_canonical_grid(field text, param text, grid double precision[], algorithm text,
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
    contract := sfq_algorithm_contracts()->algorithm->param;
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
CREATE OR REPLACE FUNCTION sfq_canonical_regimes(configs jsonb) RETURNS jsonb
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

-- A request's evaluation: {"kind": "holdout"}, or a walk-forward with every setting present (refit_every
-- 1..10000, default 21; window expanding or sliding, default expanding; start a timestamp in UTC or null).
CREATE OR REPLACE FUNCTION sfq_canonical_evaluation(given jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    unknown text;
    refit_every numeric;
    start timestamptz;
BEGIN
    IF jsonb_typeof(given) IS DISTINCT FROM 'object' OR jsonb_typeof(given->'kind') IS DISTINCT FROM 'string' THEN
        PERFORM sfq_reject('evaluation', format('must be an object with a "kind" (one of %s), got %s',
                           array_to_string(sfq_evaluation_kinds(), ', '), coalesce(given::text, 'null')));
    END IF;
    IF NOT given->>'kind' = ANY (sfq_evaluation_kinds()) THEN
        PERFORM sfq_reject('evaluation.kind', format('%L is not one of %s', given->>'kind',
                           array_to_string(sfq_evaluation_kinds(), ', ')));
    END IF;
    SELECT k INTO unknown FROM jsonb_object_keys(given) AS k
     WHERE k <> 'kind' AND (given->>'kind' = 'holdout' OR k NOT IN ('refit_every', 'window', 'start'))
     ORDER BY k LIMIT 1;
    IF unknown IS NOT NULL THEN
        PERFORM sfq_reject('evaluation.' || unknown, format('unknown setting for %s; valid: %s', given->>'kind',
            CASE given->>'kind' WHEN 'holdout' THEN 'kind' ELSE 'kind, refit_every, window, start' END));
    END IF;
    IF given->>'kind' = 'holdout' THEN
        RETURN '{"kind": "holdout"}';
    END IF;
    IF given ? 'refit_every' THEN
        IF jsonb_typeof(given->'refit_every') <> 'number' THEN
            PERFORM sfq_reject('evaluation.refit_every', format('must be an integer, got %s', given->'refit_every'));
        END IF;
        refit_every := (given->>'refit_every')::numeric;
        IF refit_every <> trunc(refit_every) OR refit_every NOT BETWEEN 1 AND 10000 THEN
            PERFORM sfq_reject('evaluation.refit_every', format('must be an integer between 1 and 10000, got %s',
                               given->'refit_every'));
        END IF;
    END IF;
    IF given ? 'window' AND (jsonb_typeof(given->'window') <> 'string'
                             OR NOT given->>'window' = ANY (sfq_walk_forward_windows())) THEN
        PERFORM sfq_reject('evaluation.window', format('%s is not one of %s', given->'window',
                           array_to_string(sfq_walk_forward_windows(), ', ')));
    END IF;
    IF jsonb_typeof(given->'start') = 'string' THEN
        BEGIN
            start := (given->>'start')::timestamptz;
        EXCEPTION WHEN others THEN
            PERFORM sfq_reject('evaluation.start', format('%s is not a timestamp', given->'start'));
        END;
    ELSIF given ? 'start' AND given->'start' <> 'null' THEN
        PERFORM sfq_reject('evaluation.start', format('must be a timestamp or null, got %s', given->'start'));
    END IF;
    RETURN jsonb_build_object(
        'kind', 'walk_forward',
        'refit_every', coalesce(trunc(refit_every)::integer, sfq_default_refit_every()),
        'window', coalesce(given->>'window', (sfq_walk_forward_windows())[1]),
        'start', sfq_utc_text(start));
END;
$$;

-- The spec's fields that a model's columns hold, as sfq_canonical_request hashes them: one formula for the
-- request's spec and for the model's (models.sql: spec(models) rebuilds it from the model's row). Frozen
-- for the models made: spec() rebuilds theirs with it, so a change would change their specs and break
-- their fingerprints; a new field must rebuild as before where it is absent (as `run` does at 1). The
-- grids' floats are written as extra_float_digits says: both callers fix it (SET extra_float_digits).
CREATE OR REPLACE FUNCTION sfq_spec_of_columns(
    symbol text, timeframe text, target_col text, target_transform text, horizon integer, algorithm text,
    hyperparameters jsonb, features text[], train_window integer, test_window integer, data_end timestamptz,
    cv_folds integer, cv_strategy text, context_symbols text[], alpha_grid double precision[],
    l1_ratio_grid double precision[], regime_configs jsonb, run integer) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'spec_version', 1,
        'symbol', symbol, 'timeframe', timeframe,
        'target_col', target_col, 'target_transform', target_transform, 'horizon', horizon,
        'algorithm', algorithm, 'hyperparameters', hyperparameters, 'features', to_jsonb(features),
        'train_window', train_window, 'test_window', test_window,
        'data_end', sfq_utc_text(data_end),
        'cv_folds', cv_folds, 'cv_strategy', cv_strategy,
        'context_symbols', to_jsonb(context_symbols),
        'alpha_grid', to_jsonb(alpha_grid), 'l1_ratio_grid', to_jsonb(l1_ratio_grid),
        'regime_configs', regime_configs
    ) || CASE WHEN run > 1 THEN jsonb_build_object('run', run) ELSE '{}' END  -- run 1 hashes as before
$$;

-- The fields sfq_spec_of_columns gives but spec_version (which another field's presence raises to 2), read
-- from it once per `sfq db upgrade` and written into sfq_spec_column_fields() as a constant: a model's row
-- stores its spec without them (sfq_spec_extra, models.sql).
DO $generate$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION sfq_spec_column_fields() RETURNS text[] LANGUAGE sql IMMUTABLE'
                   ' PARALLEL SAFE AS $body$ SELECT %L::text[] $body$',
                   ARRAY(SELECT f FROM jsonb_object_keys(sfq_spec_of_columns(
                             '', '', '', '', 1, '', '{}', '{}', 1, 1, NULL, 1, '', '{}', '{}', '{}', '[]', 2)) f
                          WHERE f <> 'spec_version' ORDER BY f));
END;
$generate$;
COMMENT ON FUNCTION sfq_spec_column_fields() IS
    'The spec''s fields a model''s columns hold (but spec_version): generated from sfq_spec_of_columns by requests.sql.';

-- The default feature set, as a request without `features` gets it (sorted as sfq_canonical_request sorts a
-- given set), read from sfq_features (registry.sql) once per `sfq db upgrade` and written as a constant:
-- reading the table took 11 µs a call in a loop, about 5 µs of a request's canonical form.
DO $generate$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION sfq_default_features() RETURNS text[] LANGUAGE sql IMMUTABLE'
                   ' PARALLEL SAFE AS $body$ SELECT %L::text[] $body$',
                   ARRAY(SELECT name FROM sfq_features WHERE is_default ORDER BY name));
END;
$generate$;
COMMENT ON FUNCTION sfq_default_features() IS
    'The features of a request that names none: generated from sfq_features by requests.sql.';

-- Every algorithm's hyperparameter contracts, by name, read from sfq_algorithms (registry.sql) once per
-- `sfq db upgrade` and written as a constant, which every lookup of an algorithm's contracts reads: an
-- expression, not a query of the table (a query, and two more relations locked, in every request's
-- transaction).
DO $generate$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION sfq_algorithm_contracts() RETURNS jsonb LANGUAGE sql IMMUTABLE'
                   ' PARALLEL SAFE AS $body$ SELECT %L::jsonb $body$',
                   (SELECT coalesce(jsonb_object_agg(name, hyperparameters), '{}') FROM sfq_algorithms));
END;
$generate$;
COMMENT ON FUNCTION sfq_algorithm_contracts() IS
    'Each algorithm''s hyperparameter contracts, by name: generated from sfq_algorithms by requests.sql.';

-- Validate a request, fill in defaults, canonicalise, and compute its spec and fingerprint, without
-- enqueueing anything. `pin_data_end` pins data_end to the latest bar at or before it (the default
-- way in); the DuckDB import keeps the legacy data_end as it was. `known_hyperparameters`: the
-- canonical form of r.hyperparameters when the caller computed it already (a sweep, once per set).
CREATE OR REPLACE FUNCTION sfq_canonical_request(r training_requests, pin_data_end boolean DEFAULT true,
                                                 known_hyperparameters jsonb DEFAULT NULL)
    RETURNS training_requests
    -- The shortest digits that give a float back (PostgreSQL's default), whatever the client set.
    LANGUAGE plpgsql STABLE SET extra_float_digits = 1 AS $$
DECLARE
    unknown text[];
    given_hyperparameters jsonb;
    contracts jsonb;
    context text;
    revisions jsonb;  -- of the request's symbols' bars (bars.sql), when a revision happened
BEGIN
    -- Each check is tested inline and its function (sfq_require, sfq_check_range, ...) called only to raise
    -- the error: calling them all was ~20 % of this function.
    IF r.symbol IS NULL THEN
        PERFORM sfq_require('symbol', r.symbol);
    END IF;
    r.symbol := upper(btrim(r.symbol));
    IF r.symbol !~ '^[A-Z0-9][A-Z0-9._:^=-]{0,31}$' THEN
        PERFORM sfq_reject('symbol', format('%L is not a ticker (letters, digits and ._:^=-, at most 32)',
                                            r.symbol));
    END IF;
    IF r.timeframe IS NULL THEN
        PERFORM sfq_require('timeframe', r.timeframe);
    END IF;
    IF r.timeframe !~ sfq_timeframe_pattern() THEN
        PERFORM sfq_reject('timeframe', format('%L is not a timeframe such as 1d, 1h or 5m', r.timeframe));
    END IF;
    -- The vocabulary's functions are inlined and folded to constants when the check is planned.
    IF r.target_col IS NULL OR r.target_col <> ALL (sfq_target_columns()) THEN
        PERFORM sfq_check_choice('target_col', r.target_col, sfq_target_columns());
    END IF;
    IF r.target_transform IS NULL OR r.target_transform <> ALL (sfq_target_transforms()) THEN
        PERFORM sfq_check_choice('target_transform', r.target_transform, sfq_target_transforms());
    END IF;
    IF r.horizon IS NULL OR r.horizon NOT BETWEEN 1 AND 1000 THEN
        PERFORM sfq_check_range('horizon', r.horizon, 1, 1000);
    END IF;
    IF r.cv_folds IS NULL OR r.cv_folds NOT BETWEEN 2 AND 50 THEN
        PERFORM sfq_check_range('cv_folds', r.cv_folds, 2, 50);
    END IF;
    IF r.train_window IS NULL OR r.train_window NOT BETWEEN 50 AND 1000000 THEN
        PERFORM sfq_check_range('train_window', r.train_window, 50, 1000000);
    END IF;
    IF r.test_window IS NULL OR r.test_window NOT BETWEEN 10 AND 1000000 THEN
        PERFORM sfq_check_range('test_window', r.test_window, 10, 1000000);
    END IF;
    IF r.execution_lag IS NULL OR r.execution_lag NOT BETWEEN 0 AND 100 THEN
        PERFORM sfq_check_range('execution_lag', r.execution_lag, 0, 100);
    END IF;
    -- The gap between fitted and scored rows is the label's reach: execution_lag + horizon bars.
    IF r.train_window < sfq_min_train_window(r.cv_folds, r.execution_lag + r.horizon) THEN
        PERFORM sfq_reject('train_window', format(
            'must hold at least (cv_folds + 1) x (execution_lag + horizon + %s) = %s bars for %s folds, got %s',
            sfq_min_fit_rows(), sfq_min_train_window(r.cv_folds, r.execution_lag + r.horizon), r.cv_folds,
            r.train_window));
    END IF;
    IF r.cv_strategy IS NULL OR r.cv_strategy <> ALL (sfq_cv_strategies()) THEN
        PERFORM sfq_check_choice('cv_strategy', r.cv_strategy, sfq_cv_strategies());
    END IF;
    IF r.run IS NULL OR r.run NOT BETWEEN 1 AND 1000000 THEN
        PERFORM sfq_check_range('run', r.run, 1, 1000000);
    END IF;

    IF r.algorithm IS NULL THEN
        PERFORM sfq_require('algorithm', r.algorithm);
    END IF;
    contracts := sfq_algorithm_contracts()->r.algorithm;
    IF contracts IS NULL THEN
        PERFORM sfq_reject('algorithm', format('%L is not one of %s', r.algorithm,
                           (SELECT string_agg(name, ', ' ORDER BY name) FROM sfq_algorithms)));
    END IF;
    given_hyperparameters := coalesce(r.hyperparameters, '{}');
    IF known_hyperparameters IS NOT NULL THEN
        r.hyperparameters := known_hyperparameters;
    ELSE
        IF jsonb_typeof(given_hyperparameters) <> 'object' THEN
            PERFORM sfq_reject('hyperparameters', format('must be a JSON object, got %s', given_hyperparameters));
        END IF;
        r.hyperparameters := sfq_canonical_params('hyperparameters', r.algorithm, given_hyperparameters, contracts);
    END IF;
    -- A grid owns its parameter: the value the inner CV picks is stored with the model's metrics.
    IF r.alpha_grid IS NULL OR cardinality(r.alpha_grid) > 0 THEN
        r.alpha_grid := sfq_canonical_grid('alpha_grid', 'alpha', r.alpha_grid, r.algorithm, given_hyperparameters);
    END IF;
    IF r.l1_ratio_grid IS NULL OR cardinality(r.l1_ratio_grid) > 0 THEN
        r.l1_ratio_grid := sfq_canonical_grid('l1_ratio_grid', 'l1_ratio', r.l1_ratio_grid, r.algorithm,
                                              given_hyperparameters);
    END IF;
    IF cardinality(r.alpha_grid) * greatest(cardinality(r.l1_ratio_grid), 1) > 400 THEN
        PERFORM sfq_reject('l1_ratio_grid', format('alpha_grid x l1_ratio_grid is %s combinations; at most 400',
                           cardinality(r.alpha_grid) * cardinality(r.l1_ratio_grid)));
    END IF;
    IF cardinality(r.alpha_grid) > 0 THEN r.hyperparameters := r.hyperparameters - 'alpha'; END IF;
    IF cardinality(r.l1_ratio_grid) > 0 THEN r.hyperparameters := r.hyperparameters - 'l1_ratio'; END IF;

    IF r.features IS NULL THEN
        r.features := sfq_default_features();
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

    IF r.context_symbols IS NULL THEN
        PERFORM sfq_require('context_symbols', r.context_symbols);
    END IF;
    IF cardinality(r.context_symbols) > 0 THEN
        r.context_symbols := ARRAY(SELECT DISTINCT upper(btrim(s)) FROM unnest(r.context_symbols) s ORDER BY 1);
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
    END IF;
    IF r.regime_configs IS DISTINCT FROM '[]' THEN
        r.regime_configs := sfq_canonical_regimes(r.regime_configs);
    END IF;

    IF r.evaluation IS DISTINCT FROM '{"kind": "holdout"}' THEN
        r.evaluation := sfq_canonical_evaluation(r.evaluation);
    END IF;

    IF r.timeout_s IS NOT NULL AND r.timeout_s NOT BETWEEN 1 AND 604800 THEN
        PERFORM sfq_check_range('timeout_s', r.timeout_s, 1, 604800);
    END IF;
    -- W3C Trace Context's traceparent, version 00 (a later version's longer header is not stored).
    IF r.traceparent IS NOT NULL AND (r.traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                                      OR substr(r.traceparent, 4, 32) = repeat('0', 32)
                                      OR substr(r.traceparent, 37, 16) = repeat('0', 16)) THEN
        PERFORM sfq_reject('traceparent', format(
            '%L is not a W3C traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, lowercase, '
            'ids not all zeros', left(r.traceparent, 100)));
    END IF;
    IF r.parent_model_id IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM models WHERE id = r.parent_model_id) THEN
            PERFORM sfq_reject('parent_model_id', format('no model with id %s', r.parent_model_id));
        END IF;
    END IF;
    IF r.retrain_of IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM models WHERE id = r.retrain_of) THEN
            PERFORM sfq_reject('retrain_of', format('no model with id %s', r.retrain_of));
        END IF;
    END IF;

    IF r.data_end IS NOT NULL AND NOT r.data_end BETWEEN '1800-01-01Z' AND '2200-01-01Z' THEN
        PERFORM sfq_reject('data_end', format('%s is not a date between 1800 and 2200', r.data_end));
    END IF;
    IF r.lockbox_start IS NOT NULL AND NOT r.lockbox_start BETWEEN '1800-01-01Z' AND '2200-01-01Z' THEN
        PERFORM sfq_reject('lockbox_start', format('%s is not a date between 1800 and 2200', r.lockbox_start));
    END IF;
    IF pin_data_end THEN
        -- Pin the data: the last bar at or before the requested end (the latest bar by default).
        -- (As max(ts), the planner may read all of the symbol's bars before the table is analyzed.)
        -- With it, the revisions of the request's symbols' bars (bars.sql), {symbol: revision}, or null
        -- when none was ever revised (a spec then hashes as before revisions were counted).
        SELECT coalesce(
                   (SELECT b.ts FROM bars b
                     WHERE b.symbol = r.symbol AND b.timeframe = r.timeframe
                       AND (r.data_end IS NULL OR b.ts <= r.data_end)
                     ORDER BY b.ts DESC LIMIT 1),
                   r.data_end),
               (SELECT jsonb_object_agg(v.symbol, v.revision ORDER BY v.symbol) FROM bar_revisions v
                 WHERE v.timeframe = r.timeframe AND v.symbol = ANY (r.symbol || r.context_symbols))
          INTO r.data_end, revisions;
        IF r.lockbox_start IS NOT NULL AND r.data_end IS NOT NULL AND r.lockbox_start > r.data_end THEN
            PERFORM sfq_reject('lockbox_start', format('%s is after data_end %s: the lockbox would be empty',
                               sfq_utc_text(r.lockbox_start), sfq_utc_text(r.data_end)));
        END IF;
        IF r.lockbox_start IS NOT NULL AND (r.evaluation->>'start')::timestamptz >= r.lockbox_start THEN
            PERFORM sfq_reject('evaluation.start', format('%s is in the lockbox (from %s)',
                               r.evaluation->>'start', sfq_utc_text(r.lockbox_start)));
        END IF;
        -- A walk-forward's start must leave the warm-up, one training window and the label's reach
        -- of bars before it, and come before the data end.
        IF r.evaluation->>'start' IS NOT NULL THEN
            DECLARE
                start timestamptz := (r.evaluation->>'start')::timestamptz;
                earliest timestamptz := (
                    SELECT b.ts FROM bars b WHERE b.symbol = r.symbol AND b.timeframe = r.timeframe
                     ORDER BY b.ts OFFSET sfq_warmup_bars() + r.train_window + r.execution_lag + r.horizon LIMIT 1);
            BEGIN
                IF earliest IS NOT NULL AND start < earliest THEN
                    PERFORM sfq_reject('evaluation.start', format(
                        '%s is before %s, the first bar with enough history (%s bars of warm-up, train_window '
                        '%s and execution_lag + horizon %s before it)', sfq_utc_text(start), sfq_utc_text(earliest),
                        sfq_warmup_bars(), r.train_window, r.execution_lag + r.horizon));
                END IF;
                IF r.data_end IS NOT NULL AND start > r.data_end THEN
                    PERFORM sfq_reject('evaluation.start', format('%s is after data_end %s: nothing to predict',
                                       sfq_utc_text(start), sfq_utc_text(r.data_end)));
                END IF;
            END;
        END IF;
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

    r.spec := sfq_spec_of_columns(
        r.symbol, r.timeframe, r.target_col, r.target_transform, r.horizon, r.algorithm, r.hyperparameters,
        r.features, r.train_window, r.test_window, r.data_end, r.cv_folds, r.cv_strategy, r.context_symbols,
        r.alpha_grid, r.l1_ratio_grid, r.regime_configs, r.run)
      -- execution_lag 0 is the label every model had before the field (from the signal's close), and
      -- hashes as before; from 1 on (the default) it is hashed, under spec_version 2.
      || CASE WHEN r.execution_lag > 0
              THEN jsonb_build_object('spec_version', 2, 'execution_lag', r.execution_lag) ELSE '{}' END
      -- Revised bars (sql/schema/bars.sql) make a new model; none revised hashes as before.
      || CASE WHEN revisions IS NOT NULL THEN jsonb_build_object('bars_revision', revisions) ELSE '{}' END
      || CASE WHEN r.lockbox_start IS NOT NULL
              THEN jsonb_build_object('lockbox_start', sfq_utc_text(r.lockbox_start)) ELSE '{}' END
      -- The default, holdout, hashes as before; a walk-forward is hashed with every setting.
      || CASE WHEN r.evaluation->>'kind' = 'walk_forward'
              THEN jsonb_build_object('evaluation', r.evaluation) ELSE '{}' END;
    r.fingerprint := encode(sha256(convert_to(r.spec::text, 'UTF8')), 'hex');
    RETURN r;
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- The JSON way in (the API, the CLI, and the operations' functions).

-- The columns of training_requests a request may set (the others are filled in by the trigger).
CREATE OR REPLACE FUNCTION sfq_request_fields() RETURNS SETOF pg_attribute
    LANGUAGE sql STABLE AS $$
    SELECT * FROM pg_attribute
     WHERE attrelid = 'training_requests'::regclass AND attnum > 0 AND NOT attisdropped
       AND attname NOT IN ('id', 'received_at', 'via', 'model_id', 'fingerprint', 'deduplicated', 'spec')
$$;

-- Every request column's JSON type and default, read from the table once per `sfq db upgrade` (here) and
-- written into the two functions below as constants: the table stays their one home, and the JSON way in
-- reads neither the catalog nor a default's expression per request. A default that calls a function (now())
-- would be frozen here: refused.
DO $generate$
DECLARE
    types jsonb := '{}';
    defaults jsonb := '{}';
    name text;
    column_type text;
    expression text;
    value jsonb;
BEGIN
    FOR name, column_type, expression IN
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid)
          FROM sfq_request_fields() a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LOOP
        types := types || jsonb_build_object(name, column_type);
        IF expression ~ '\(' THEN
            RAISE EXCEPTION 'training_requests.% has the default %, not a constant', name, expression;
        END IF;
        IF expression IS NOT NULL THEN
            EXECUTE format('SELECT to_jsonb(%s)', expression) INTO value;
            defaults := defaults || jsonb_build_object(name, value);
        END IF;
    END LOOP;
    EXECUTE format('CREATE OR REPLACE FUNCTION sfq_request_types() RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE'
                   ' AS $body$ SELECT %L::jsonb $body$', types);
    EXECUTE format('CREATE OR REPLACE FUNCTION sfq_request_defaults() RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE'
                   ' AS $body$ SELECT %L::jsonb $body$', defaults);
END;
$generate$;
COMMENT ON FUNCTION sfq_request_types() IS
    'Each request column''s type (format_type), by name: generated from training_requests by requests.sql.';
COMMENT ON FUNCTION sfq_request_defaults() IS
    'Each request column''s default, as JSON: generated from training_requests by requests.sql.';

-- The JSON way in, split so that a sweep can check its base and each grid value once, not once per
-- combination: each field's JSON type checked by name, top-level nulls dropped (null = the default),
-- integers written as integers. A value whose conversion to its column can fail although its JSON type is
-- right (a timestamp, an array of floats) is tried in a subtransaction; the others (text, JSON, arrays of
-- text, integers once in range) need none, and a request of only those costs none.
CREATE OR REPLACE FUNCTION sfq_check_request_json(request jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    types jsonb := sfq_request_types();
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
        column_type := types->>field;
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
            IF (column_type = 'integer' AND value::numeric NOT BETWEEN -2147483648 AND 2147483647)
               OR value::numeric NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
                PERFORM sfq_reject(field, format('%s is not a valid %s', value, column_type));
            END IF;
            request := jsonb_set(request, ARRAY[field], to_jsonb(trunc(value::numeric)));
        ELSIF column_type NOT IN ('text', 'jsonb', 'text[]') THEN
            BEGIN
                PERFORM jsonb_populate_record(NULL::training_requests, jsonb_build_object(field, value));
            EXCEPTION WHEN data_exception THEN
                PERFORM sfq_reject(field, format('%s is not a valid %s', value, column_type));
            END;
        END IF;
    END LOOP;
    RETURN request;
END;
$$;

-- The JSON way in, used by the HTTP API and the CLI: the same INSERT, after checking each field's
-- JSON type so that a wrong type is reported with its field's name. JSON null means "the default".
-- One static INSERT of the whole row (the absent fields' defaults filled in), so that its plan is cached:
-- an INSERT of the given columns only was composed and planned at every call.
CREATE OR REPLACE FUNCTION sfq_submit(request jsonb, via text DEFAULT 'sql') RETURNS training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    accepted training_requests;
BEGIN
    INSERT INTO training_requests OVERRIDING SYSTEM VALUE SELECT r.* FROM sfq_request_row(request, via) r
    RETURNING * INTO accepted;
    RETURN accepted;
END;
$$;

-- Many requests of the JSON way in, in one statement, in the array's order (their ids ascending in it):
-- the API gathers concurrent POST /train into one (queue_app/api/gathering.py), which then share one
-- statement trigger and one commit. One bad request refuses them all, naming its field; the API then
-- submits each alone, so that each gets its own answer.
CREATE OR REPLACE FUNCTION sfq_submit_many(requests jsonb, via text DEFAULT 'sql') RETURNS SETOF training_requests
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF jsonb_typeof(requests) IS DISTINCT FROM 'array' THEN
        PERFORM sfq_reject('requests', 'must be a JSON array of requests');
    END IF;
    RETURN QUERY
        INSERT INTO training_requests OVERRIDING SYSTEM VALUE
        SELECT r.* FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(request, i),
                        LATERAL sfq_request_row(e.request, via) AS r
         ORDER BY e.i
        RETURNING *;
END;
$$;

-- A JSON request's row, as the INSERT of the JSON way in writes it: its fields checked and converted, the
-- absent ones' defaults, its id (drawn here, so that a statement of many has them in its order), the
-- time and the way it came.
CREATE OR REPLACE FUNCTION sfq_request_row(request jsonb, via text) RETURNS training_requests
    LANGUAGE plpgsql AS $$
DECLARE
    r training_requests := jsonb_populate_record(NULL::training_requests,
                                                 sfq_request_defaults() || sfq_check_request_json(request));
BEGIN
    r.id := nextval(pg_get_serial_sequence('training_requests', 'id'));
    r.received_at := now();
    r.via := via;
    RETURN r;
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- The way in: INSERT INTO training_requests (HTTP, CLI, batch, retrain, evolve and other services alike).
-- Both triggers run as the owner (a submitter may not create models or defer jobs).

-- The row trigger: canonical request, then its model (a new one, or the live one with its fingerprint).
-- The new model's job is deferred by training_requests_defer, at the end of the statement. The request
-- row keeps no spec (0025): it is its model's (models.spec, of the same fingerprint), 1 KB a request less.
CREATE OR REPLACE FUNCTION sfq_accept_training_request() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    NEW := sfq_canonical_request(NEW);
    IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN -100 AND 100 THEN
        PERFORM sfq_check_range('priority', NEW.priority, -100, 100);
    END IF;
    LOOP
        NEW.model_id := (sfq_insert_models(ARRAY[sfq_new_model(NEW)]))[1];
        IF NEW.model_id IS NOT NULL THEN
            NEW.deduplicated := false;
            EXIT;
        END IF;

        -- Same fingerprint already live: that model serves this request. (Loop if it just failed.)
        SELECT id INTO NEW.model_id FROM models
         WHERE fingerprint = NEW.fingerprint AND status NOT IN ('failed', 'cancelled');
        IF NEW.model_id IS NOT NULL THEN
            NEW.deduplicated := true;
            EXIT;
        END IF;
    END LOOP;
    NEW.spec := NULL;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER training_requests_accept BEFORE INSERT ON training_requests
    FOR EACH ROW EXECUTE FUNCTION sfq_accept_training_request();

-- The statement's new models get their jobs in one call, in the order of their requests, each with the
-- priority of the request that created it, and are counted (sql/schema/counts.sql), once for the statement.
CREATE OR REPLACE FUNCTION sfq_defer_training_requests() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    model_ids bigint[];
    priorities integer[];
    symbols text[];
    algorithms text[];
    n integer;
BEGIN
    SELECT array_agg(model_id ORDER BY id), array_agg(priority ORDER BY id), array_agg(symbol),
           array_agg(algorithm), count(*)
      INTO model_ids, priorities, symbols, algorithms, n
      FROM accepted WHERE NOT deduplicated;
    IF n > 0 THEN
        PERFORM sfq_defer_training(model_ids, priorities);
        -- Counted once for the statement (counts.sql, which groups them): each new model is queued, with
        -- its request's symbol and algorithm.
        PERFORM sfq_add_model_counts(symbols, algorithms, array_fill('queued'::sfq_model_status, ARRAY[n]),
                                     NULL, array_fill(1::bigint, ARRAY[n]), NULL);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER training_requests_defer AFTER INSERT ON training_requests
    REFERENCING NEW TABLE AS accepted FOR EACH STATEMENT EXECUTE FUNCTION sfq_defer_training_requests();

-- Retention: a request's row is the inbox, not the model's record (its model keeps the spec, the trace
-- context and everything a reader reads; nothing reads a request back once accepted), so it goes with the
-- queue jobs, after SFQ_JOB_RETENTION_S: about 650 B a model (docs/BENCHMARKS.md, bytes per model).
-- Up to `batch` requests received before the retention, in one transaction; how many went: the caller
-- calls again until fewer than `batch` go. Like the jobs' prune, its cost follows what is to be pruned,
-- not the table: ids and receipt times rise together, so the requests to prune are the ones before the
-- first inside the retention (`boundary`, found by reading the primary key up to it). A request whose
-- id came before an older one's (a transaction that began later and inserted first) goes with its
-- neighbours, seconds early. One pruner at a time (others return 0 at once). SECURITY DEFINER: the
-- workers that prune may not delete requests otherwise.
CREATE OR REPLACE FUNCTION sfq_prune_requests(older_than interval, batch integer DEFAULT 10000)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    boundary bigint;
    pruned integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('sfq_prune_requests')) THEN
        RETURN 0;
    END IF;
    SELECT r.id INTO boundary FROM training_requests r WHERE r.received_at >= now() - older_than
     ORDER BY r.id LIMIT 1;
    boundary := coalesce(boundary, 9223372036854775807);
    WITH victims AS (
        SELECT r.id FROM training_requests r WHERE r.id < boundary ORDER BY r.id LIMIT batch
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM training_requests r USING victims v WHERE r.id = v.id RETURNING 1
    )
    SELECT count(*)::integer INTO pruned FROM gone;
    RETURN pruned;
END;
$$;
