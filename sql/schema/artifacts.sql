-- sfq/artifacts: the retention of model files (`sfq artifacts evict`, queue_app/artifact_store.py).
--
-- A model's file may be evicted when the model is none of: aliased (strategy_aliases: a strategy serves
-- it), in the top keep_top of its symbol's leaderboard (the completed models of that symbol that store the
-- metric, best first: highest first, or lowest with descending = false, as GET /models?symbol=&sort=&order=
-- ranks them; ties by the newer id), or trained less than older_than_days ago (model_artifacts.created_at).
-- Evicting unlinks the file (model_artifacts.blob NULL; its recorded SHA-256 stays), and a forecast or
-- lockbox backtest that needs it again retrains the model (same spec, same bars, same seed) and checks the
-- new file's SHA-256 against the recorded one (workers/daemon/model_files.py). A blob no model links to is
-- then removed by sfq_collect_blobs.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- The files the policy evicts (all of them, or of the models model_ids: an aliased one among them is refused
-- and nothing is evicted), evicted unless dry_run; each with its recorded SHA-256 and size.
CREATE OR REPLACE FUNCTION sfq_evict_artifacts(
    older_than_days integer, keep_top integer, metric text DEFAULT 'ic', descending boolean DEFAULT true,
    model_ids bigint[] DEFAULT NULL, dry_run boolean DEFAULT false
) RETURNS TABLE (model_id bigint, sha256 text, size bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    aliased text;
BEGIN
    IF older_than_days IS NULL OR older_than_days < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'older_than_days',
            MESSAGE = format('older_than_days must be 0 or more days, got %s', coalesce(older_than_days::text, 'null'));
    END IF;
    IF keep_top IS NULL OR keep_top < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'keep_top',
            MESSAGE = format('keep_top must be 0 or more models, got %s', coalesce(keep_top::text, 'null'));
    END IF;
    -- The leaderboard sorts on the metrics that have an index (tables.sql models_metric_*): another name
    -- would rank nothing and leave no model in any top, so it is refused.
    IF metric IS NULL OR to_regclass('models_metric_' || metric) IS NULL OR metric !~ '^[a-z0-9_]+$' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'metric',
            MESSAGE = format('metric %s is not one the leaderboard sorts on', coalesce(metric, 'null'));
    END IF;
    SELECT string_agg(format('model %s (%s/%s)', a.model_id, a.strategy, a.alias), ', ' ORDER BY a.model_id)
      INTO aliased FROM strategy_aliases a WHERE a.model_id = ANY (model_ids);
    IF aliased IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'model_ids',
            MESSAGE = format('refused, nothing evicted: aliased models keep their files: %s', aliased);
    END IF;
    RETURN QUERY
    WITH ranked AS (
        SELECT m.id, row_number() OVER (
                   PARTITION BY m.symbol
                   ORDER BY CASE WHEN descending THEN -v.value ELSE v.value END, m.id DESC) AS place
          FROM models m
         CROSS JOIN LATERAL (SELECT sfq_metric_value(m.metrics, metric) AS value) v
         WHERE m.status = 'completed' AND v.value IS NOT NULL
    ), chosen AS (
        SELECT a.model_id FROM model_artifacts a
         WHERE a.blob IS NOT NULL
           AND (model_ids IS NULL OR a.model_id = ANY (model_ids))
           AND a.created_at < now() - make_interval(days => older_than_days)
           AND NOT EXISTS (SELECT 1 FROM strategy_aliases s WHERE s.model_id = a.model_id)
           AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.id = a.model_id AND r.place <= keep_top)
         ORDER BY a.model_id
           FOR UPDATE OF a
    ), evicted AS (
        UPDATE model_artifacts a SET blob = NULL, evicted_at = now()
          FROM chosen c WHERE a.model_id = c.model_id AND NOT dry_run
        RETURNING a.model_id
    )
    SELECT a.model_id, a.sha256, a.size FROM model_artifacts a JOIN chosen c ON c.model_id = a.model_id
     WHERE dry_run OR a.model_id IN (SELECT e.model_id FROM evicted e)
     ORDER BY a.model_id;
END;
$$;

-- Remove the blobs no model links to, one at a time: a blob a model links to meanwhile (its writer locks
-- the blob's row, and the foreign key of model_artifacts.blob refuses the delete) is kept. Returns what
-- went, with the location of those in an outside store (whose objects the caller removes).
CREATE OR REPLACE FUNCTION sfq_collect_blobs() RETURNS TABLE (sha256 text, location text, size bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    b blobs;
BEGIN
    FOR b IN SELECT * FROM blobs x WHERE NOT EXISTS (SELECT 1 FROM model_artifacts a WHERE a.blob = x.sha256)
    LOOP
        BEGIN
            DELETE FROM blobs x WHERE x.sha256 = b.sha256;
            sha256 := b.sha256;
            location := b.location;
            size := b.size;
            RETURN NEXT;
        EXCEPTION WHEN foreign_key_violation THEN
            NULL;  -- linked meanwhile: kept
        END;
    END LOOP;
END;
$$;
