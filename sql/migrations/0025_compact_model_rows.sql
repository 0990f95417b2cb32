-- sfq 0025: a completed model's rows, smaller (issue 15 part 2).
--
-- Feature importances: one row of arrays per model (model_features) instead of a row per feature (13 rows,
-- 1.5 KB a model with their primary key's entries; now about 0.5); the view features_log
-- (sql/schema/models.sql) reads them as before. A model's rank is the position: every model's ranks were
-- 1..n already (the worker ranks them so, the DuckDB import too), ties in rank kept in feature order.
CREATE TABLE model_features (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    method text NOT NULL,  -- impurity, abs_coefficient, permutation or legacy
    features text[] NOT NULL,  -- most important first: a feature's rank is its position
    importances double precision[] NOT NULL,
    CHECK (cardinality(features) = cardinality(importances))
);
INSERT INTO model_features (model_id, method, features, importances)
SELECT model_id, min(method), array_agg(feature ORDER BY rank, feature),
       array_agg(importance ORDER BY rank, feature)
  FROM features_log
 GROUP BY model_id;
DROP TABLE features_log;

-- A request's spec: its model's (models.spec, the same fingerprint), no longer kept in the request's row
-- too (1 KB a request with its page's share). The rows rewritten here leave dead versions for VACUUM.
COMMENT ON COLUMN training_requests.spec IS
    'Not kept (NULL): the canonical spec that was hashed is its model''s, models.spec (since 0025).';
UPDATE training_requests SET spec = NULL WHERE spec IS NOT NULL;

-- Every lookup by fingerprint (a request's, a sweep's, the DuckDB import's) is of the live model, which
-- models_fingerprint_live answers: the index of every model's fingerprint served none (about 100 B a model).
DROP INDEX models_fingerprint;
