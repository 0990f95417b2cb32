-- sfq 0031: a model's spec is rebuilt from its row, not stored beside the columns it repeats (issue 15
-- part 2: 768 B of JSON in a completed Ridge's 1,976 B row, four rows to an 8 KB page).
--
-- models.spec_extra keeps what of the spec no column holds; spec(models) (sql/schema/models.sql) puts the
-- spec back together, so `m.spec` reads it as before. Each model made before gets the same compact form
-- when its columns give its spec back byte for byte with the formula of sfq_spec_of_columns as of 0031
-- (written out here: a migration runs before the schema's functions); any other keeps its whole spec,
-- which spec() returns as it is (it has `symbol`). Either way the fingerprints stay those of the bytes
-- hashed.
--
-- The table is rewritten twice under the upgrade's lock, and needs free disk for a copy of it: once to
-- fill spec_extra (ALTER ... USING: no dead row versions, no row trigger or counter fired), once after
-- the DROP, which only hides the column: its bytes stay in every row until the row is written again.
-- Old workers and API processes read the column: stop them before `sfq db upgrade` (docs/systemd.md).
CREATE FUNCTION pg_temp.sfq_0031_spec_extra(
    spec jsonb, symbol text, timeframe text, target_col text, target_transform text, horizon integer,
    algorithm text, hyperparameters jsonb, features text[], train_window integer, test_window integer,
    data_end timestamptz, cv_folds integer, cv_strategy text, context_symbols text[],
    alpha_grid double precision[], l1_ratio_grid double precision[], regime_configs jsonb, run integer)
    RETURNS jsonb LANGUAGE sql IMMUTABLE SET extra_float_digits = 1 AS $$
    SELECT CASE WHEN (c.of_columns || d.extra)::text = spec::text AND NOT d.extra ? 'symbol' THEN d.extra
                ELSE spec END
      FROM (SELECT jsonb_build_object(
                       'spec_version', 1,
                       'symbol', symbol, 'timeframe', timeframe,
                       'target_col', target_col, 'target_transform', target_transform, 'horizon', horizon,
                       'algorithm', algorithm, 'hyperparameters', hyperparameters,
                       'features', to_jsonb(features),
                       'train_window', train_window, 'test_window', test_window,
                       'data_end', to_char(data_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       'cv_folds', cv_folds, 'cv_strategy', cv_strategy,
                       'context_symbols', to_jsonb(context_symbols),
                       'alpha_grid', to_jsonb(alpha_grid), 'l1_ratio_grid', to_jsonb(l1_ratio_grid),
                       'regime_configs', regime_configs
                   ) || CASE WHEN run > 1 THEN jsonb_build_object('run', run) ELSE '{}' END AS of_columns) c
     CROSS JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') AS extra
              FROM jsonb_each(spec) e WHERE c.of_columns -> e.key IS DISTINCT FROM e.value) d
$$;
ALTER TABLE models ADD COLUMN spec_extra jsonb;
COMMENT ON COLUMN models.spec_extra IS
    'The hashed spec''s fields that no column holds (spec_version 2, execution_lag, bars_revision, lockbox_start, '
    'evaluation), or the whole spec when the columns do not rebuild it. models.spec (a function) is the spec.';
ALTER TABLE models ALTER COLUMN spec_extra TYPE jsonb USING pg_temp.sfq_0031_spec_extra(
    spec, symbol, timeframe, target_col, target_transform, horizon, algorithm, hyperparameters, features,
    train_window, test_window, data_end, cv_folds, cv_strategy, context_symbols, alpha_grid, l1_ratio_grid,
    regime_configs, run);
DROP FUNCTION pg_temp.sfq_0031_spec_extra;
ALTER TABLE models ALTER COLUMN spec_extra SET NOT NULL, DROP COLUMN spec;
ALTER TABLE models ALTER COLUMN spec_extra TYPE jsonb USING spec_extra || '{}';  -- the rewrite
