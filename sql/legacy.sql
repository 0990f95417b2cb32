-- Named queries of `sfq migrate-duckdb` (queue_app/legacy.py, docs/legacy-duckdb.md). The duckdb_ ones
-- read the old service's DuckDB file; the others write PostgreSQL, all in one transaction.

-- duckdb_columns --
-- (DuckDB) every column of the legacy file's tables, with its type.
SELECT lower(table_name) AS table_name, lower(column_name) AS column_name, data_type
  FROM information_schema.columns
 WHERE table_schema = 'main'

-- duckdb_models --
-- (DuckDB) the legacy models.
SELECT * FROM models ORDER BY id

-- duckdb_features_log --
-- (DuckDB) the legacy feature importances.
SELECT * FROM features_log ORDER BY model_id

-- duckdb_simulation_history --
-- (DuckDB) the legacy backtests.
SELECT * FROM simulation_history ORDER BY id

-- begin_import --
-- One import at a time (a second waits), and legacy timestamps without a time zone read as UTC.
SELECT pg_advisory_xact_lock(hashtext('sfq migrate-duckdb')), set_config('TimeZone', 'UTC', true)

-- create_import_tables --
-- Temporary tables for the import's COPY steps (dropped at commit).
CREATE TEMP TABLE legacy_request_defaults (LIKE training_requests INCLUDING DEFAULTS INCLUDING IDENTITY)
    ON COMMIT DROP;
CREATE TEMP TABLE legacy_features (
    legacy_model_id bigint NOT NULL,
    model_id bigint NOT NULL,
    feature text NOT NULL,
    importance double precision NOT NULL,
    logged_at timestamptz
) ON COMMIT DROP;
CREATE TEMP TABLE legacy_simulations (
    legacy_id bigint NOT NULL,
    model_id bigint NOT NULL,
    strategy text NOT NULL,
    params jsonb NOT NULL,
    start_date date,
    end_date date,
    total_return double precision,
    sharpe double precision,
    max_drawdown double precision,
    n_trades double precision,
    equity_curve jsonb,
    created_at timestamptz
) ON COMMIT DROP;

-- request_defaults --
-- The request columns' defaults, as JSON: jsonb_populate_record leaves an absent column NULL, not default.
WITH d AS (INSERT INTO legacy_request_defaults DEFAULT VALUES RETURNING *)
SELECT jsonb_object_agg(field.key, field.value)
  FROM d, jsonb_each(to_jsonb(d)) AS field
 WHERE field.key IN (SELECT attname FROM sfq_request_fields())

-- import_model --
-- One legacy model, validated and fingerprinted by sfq_canonical_request (its data_end kept, not pinned to
-- the bars there are now), inserted by sfq_insert_models with its legacy outcome and no job. `outcome` is
-- inserted, present (imported before), conflict (imported before from another file of the same name, with
-- another spec) or duplicate (a live model has its fingerprint); `model_id` is the model it maps to. A
-- failed or cancelled legacy model is inserted even when a live model has its fingerprint.
WITH request AS (
    SELECT sfq_canonical_request(
               jsonb_populate_record(NULL::training_requests, %(defaults)s::jsonb || %(request)s::jsonb),
               pin_data_end => false) AS r
), present AS (
    SELECT id, fingerprint FROM models WHERE imported_from = %(imported_from)s
), inserted AS (
    SELECT id
      FROM unnest(sfq_insert_models(ARRAY(
               SELECT jsonb_populate_record(sfq_new_model(request.r), jsonb_build_object(
                          'status', %(status)s::text, 'error', %(error)s::text,
                          'submitted_at', coalesce(%(created_at)s::timestamptz, now()),
                          'finished_at', %(finished_at)s::timestamptz, 'metrics', %(metrics)s::jsonb,
                          'imported_from', %(imported_from)s::text))
                 FROM request
                WHERE NOT EXISTS (SELECT 1 FROM present)))) AS id
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM inserted) THEN 'inserted'
            -- Same file name and legacy id, another spec: another file of the same name.
            WHEN EXISTS (SELECT 1 FROM present WHERE present.fingerprint <> (request.r).fingerprint) THEN 'conflict'
            WHEN EXISTS (SELECT 1 FROM present) THEN 'present'
            ELSE 'duplicate' END AS outcome,
       coalesce((SELECT id FROM inserted), (SELECT id FROM present), live.id) AS model_id,
       live.imported_from AS duplicate_of
  FROM request
  LEFT JOIN models live ON live.fingerprint = (request.r).fingerprint AND live.status NOT IN ('failed', 'cancelled')

-- link_parents --
-- Second pass, once every legacy model has its new id (a parent may come after its child in the file).
UPDATE models m
   SET parent_model_id = link.parent
  FROM unnest(%(children)s::bigint[], %(parents)s::bigint[]) AS link(child, parent)
 WHERE m.id = link.child

-- copy_features --
-- COPY legacy feature importances into their temporary table.
COPY legacy_features (legacy_model_id, model_id, feature, importance, logged_at) FROM STDIN

-- import_features --
-- The latest row per legacy model and feature, ranked by importance (1 = most important); a model with
-- features already keeps them as they are. How many features were inserted.
WITH inserted AS (
    INSERT INTO model_features (model_id, method, features, importances)
    SELECT model_id, 'legacy', array_agg(feature ORDER BY importance DESC, feature),
           array_agg(importance ORDER BY importance DESC, feature)
      FROM (SELECT DISTINCT ON (legacy_model_id, feature) *
              FROM legacy_features
             ORDER BY legacy_model_id, feature, logged_at DESC NULLS LAST) AS latest
     GROUP BY model_id
    ON CONFLICT (model_id) DO NOTHING
    RETURNING cardinality(features) AS features
)
SELECT coalesce(sum(features), 0)::integer FROM inserted

-- copy_simulations --
-- COPY legacy backtests into their temporary table.
COPY legacy_simulations (legacy_id, model_id, strategy, params, start_date, end_date, total_return, sharpe,
                         max_drawdown, n_trades, equity_curve, created_at) FROM STDIN

-- import_simulations --
-- A backtest already there (same model, strategy, params and period) is kept as it is. The old service's
-- backtests did not trade the label: convention 'legacy', read by no leaderboard.
INSERT INTO simulation_history (model_id, strategy, params, period_start, period_end, metrics, equity_curve,
                                imported_from, created_at, convention)
SELECT model_id, strategy, params, start_date::timestamp AT TIME ZONE 'UTC', end_date::timestamp AT TIME ZONE 'UTC',
       jsonb_strip_nulls(jsonb_build_object('total_return', total_return, 'sharpe', sharpe,
                                            'max_drawdown', max_drawdown, 'n_trades', n_trades)),
       equity_curve, 'duckdb:' || %(file)s || '#' || legacy_id, coalesce(created_at, now()), 'legacy'
  FROM legacy_simulations
 ORDER BY legacy_id
ON CONFLICT DO NOTHING
