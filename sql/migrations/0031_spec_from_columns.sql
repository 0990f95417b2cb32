-- sfq 0031: a model's spec is rebuilt from its row, not stored beside the columns it repeats (issue 15
-- part 2: 768 B of JSON in a completed Ridge's 1,976 B row, four rows to an 8 KB page).
--
-- models.spec_extra keeps what of the spec no column holds; spec(models) (sql/schema/models.sql) puts the
-- spec back together, so `m.spec` reads it as before. Each model made before gets the same compact form
-- when its columns give its spec back byte for byte with the formula of sfq_spec_of_columns as of 0031
-- (written out here: a migration runs before the schema's functions); any other keeps its whole spec,
-- which spec() returns as it is (it has `symbol`). Either way the fingerprints stay those of the bytes
-- hashed. The UPDATE rewrites every row (99,474 queued models: 26 s here); VACUUM reclaims the old versions.
ALTER TABLE models ADD COLUMN spec_extra jsonb;
COMMENT ON COLUMN models.spec_extra IS
    'The hashed spec''s fields that no column holds (spec_version 2, execution_lag, bars_revision, lockbox_start, '
    'evaluation), or the whole spec when the columns do not rebuild it. models.spec (a function) is the spec.';
UPDATE models m
   SET spec_extra = CASE WHEN (c.of_columns || d.extra)::text = m.spec::text AND NOT d.extra ? 'symbol'
                         THEN d.extra ELSE m.spec END
  FROM models o
 CROSS JOIN LATERAL (
        SELECT jsonb_build_object(
                   'spec_version', 1,
                   'symbol', o.symbol, 'timeframe', o.timeframe,
                   'target_col', o.target_col, 'target_transform', o.target_transform, 'horizon', o.horizon,
                   'algorithm', o.algorithm, 'hyperparameters', o.hyperparameters,
                   'features', to_jsonb(o.features),
                   'train_window', o.train_window, 'test_window', o.test_window,
                   'data_end', to_char(o.data_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'cv_folds', o.cv_folds, 'cv_strategy', o.cv_strategy,
                   'context_symbols', to_jsonb(o.context_symbols),
                   'alpha_grid', to_jsonb(o.alpha_grid), 'l1_ratio_grid', to_jsonb(o.l1_ratio_grid),
                   'regime_configs', o.regime_configs
               ) || CASE WHEN o.run > 1 THEN jsonb_build_object('run', o.run) ELSE '{}' END AS of_columns) c
 CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') AS extra
          FROM jsonb_each(o.spec) e WHERE c.of_columns -> e.key IS DISTINCT FROM e.value) d
 WHERE o.id = m.id;
ALTER TABLE models ALTER COLUMN spec_extra SET NOT NULL, DROP COLUMN spec;
