-- Named queries: a `-- name --` header, a one-line description, then the SQL. Each has one typed function
-- in queue_app/gateway.py, the only code that runs them.

-- submit --
-- Every way in (HTTP, CLI) goes through the same INSERT INTO training_requests as a plain SQL client.
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_submit(%(request)s::jsonb, %(via)s)

-- submit_many --
-- Many requests, each its own model, in one statement (the API gathers concurrent POST /train), in order.
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_submit_many(%(requests)s::jsonb, %(via)s) ORDER BY id

-- submit_batch --
-- One model per target column, in one transaction.
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_submit_batch(%(request)s::jsonb, %(via)s)

-- retrain --
-- A model's spec again on the bars there are now (sfq_retrain): the same model, or a new one.
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_retrain(%(model_id)s, %(force)s, %(via)s)

-- evolve --
-- A child of a model: its spec with overrides applied field by field (sfq_evolve).
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_evolve(%(parent_model_id)s, %(overrides)s::jsonb, %(via)s)

-- model_jobs --
-- The training jobs of these models (a traced submission's producer span names the messages it sent).
SELECT job_id FROM models WHERE id = ANY(%(model_ids)s) AND job_id IS NOT NULL ORDER BY id

-- cancel_model --
-- Cancel a queued or running model (sfq_cancel_model); 409 when it is finished.
SELECT id, status::text, finished_at FROM sfq_cancel_model(%(model_id)s)

-- request_forecast --
-- Ask for a forecast from the latest bar with the stored model (one per model and bar).
SELECT * FROM sfq_request_forecast(%(model_id)s)

-- get_forecast --
-- A forecast with what it forecasts (the model's symbol, horizon and target).
SELECT f.id, f.model_id, f.status, f.as_of, m.symbol, m.timeframe, m.horizon, m.target_col,
       m.target_transform, f.prediction, f.reference_close, f.predicted_price, f.error, f.requested_at,
       f.finished_at, f.realised, f.realised_at
  FROM model_forecasts f JOIN models m ON m.id = f.model_id
 WHERE f.id = %(forecast_id)s

-- model_status --
-- Whether a model exists, and its status.
SELECT id, status::text FROM models WHERE id = %(model_id)s

-- model_predictions --
-- A model's out-of-sample predictions (held-out window, or a walk-forward's stitched series): each bar's
-- prediction next to the actual value.
SELECT ts, predicted, actual FROM model_predictions WHERE model_id = %(model_id)s
UNION ALL
SELECT s.first_ts + make_interval(secs => p.seconds), p.predicted, p.actual
  FROM model_prediction_series s LEFT JOIN prediction_axes x ON x.sha256 = s.axes,
       unnest(coalesce(s.seconds, x.seconds), s.predicted, coalesce(s.actual, x.actual))
           AS p(seconds, predicted, actual)
 WHERE s.model_id = %(model_id)s
 ORDER BY ts

-- model_artifact --
-- A model's file (skops): its format, size and recorded SHA-256, and where its bytes are: its blob (NULL
-- once evicted) with the blob's chunk count and location (NULL: in blob_chunks).
SELECT a.model_id, a.format, a.sha256, a.size, a.blob, a.evicted_at, b.chunks, b.location
  FROM model_artifacts a LEFT JOIN blobs b ON b.sha256 = a.blob
 WHERE a.model_id = %(model_id)s

-- blob_chunk --
-- One chunk of a blob's bytes (n from 0): files are read a chunk at a time, never whole in one row.
SELECT bytes FROM blob_chunks WHERE sha256 = %(sha256)s AND n = %(n)s

-- lineage --
-- The model's ancestors (parent_model_id upwards) and descendants, with their specs and metrics.
-- (A parent link cannot loop when made by sfq; CYCLE stops the walk anyway if one ever does.)
WITH RECURSIVE ancestors AS (
    SELECT id, parent_model_id, 0 AS depth FROM models WHERE id = %(model_id)s
    UNION ALL
    SELECT m.id, m.parent_model_id, a.depth - 1
      FROM models m JOIN ancestors a ON m.id = a.parent_model_id
) CYCLE id SET looped USING path, descendants AS (
    SELECT id, parent_model_id, 0 AS depth FROM models WHERE id = %(model_id)s
    UNION ALL
    SELECT m.id, m.parent_model_id, d.depth + 1
      FROM models m JOIN descendants d ON m.parent_model_id = d.id
) CYCLE id SET looped USING path
SELECT m.id, m.parent_model_id, m.retrain_of, c.depth, m.status::text, m.symbol, m.algorithm,
       m.target_col, m.fingerprint, m.spec, m.metrics, m.submitted_at
  FROM (SELECT DISTINCT ON (id) id, depth
          FROM (SELECT id, depth FROM ancestors WHERE NOT looped
                UNION SELECT id, depth FROM descendants WHERE NOT looped) AS walked
         ORDER BY id, abs(depth)) c JOIN models m USING (id)
 ORDER BY c.depth, m.id

-- start_model --
-- Claim the model for this attempt; no row when it is no longer queued or running (cancelled, done) or
-- when this job is not the model's current job (an old job that came back after a rescue).
UPDATE models
   SET status = 'running', started_at = now(), finished_at = NULL, error = NULL, attempts = attempts + 1,
       worker_host = %(host)s, worker_pid = %(pid)s,
       progress = jsonb_build_object('phase', 'starting', 'fraction', 0, 'at', now())
 WHERE id = %(model_id)s AND status IN ('queued', 'running') AND job_id = %(job_id)s
RETURNING attempts, models.spec, timeout_s, fingerprint, algorithm, traceparent

-- load_bars --
-- The last bars up to the model's pinned data end, oldest first, in one query.
SELECT ts, open, high, low, close, volume
  FROM (SELECT ts, open, high, low, close, volume
          FROM bars
         WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts <= %(data_end)s
         ORDER BY ts DESC
         LIMIT %(limit)s) AS recent
 ORDER BY ts

-- load_context_bars --
-- A context symbol's bars from `since` (the first main bar) up to the end, and `limit` bars before it.
SELECT ts, open, high, low, close, volume
  FROM bars
 WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts <= %(data_end)s
   AND ts >= coalesce((SELECT min(ts)
                         FROM (SELECT ts FROM bars
                                WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts < %(since)s
                                ORDER BY ts DESC LIMIT %(limit)s) AS warmup), %(since)s)
 ORDER BY ts

-- report_progress --
-- From the training process; only while this attempt holds the model.
UPDATE models
   SET progress = jsonb_build_object('phase', %(phase)s::text, 'fraction', %(fraction)s::float8, 'at', now())
 WHERE id = %(model_id)s AND attempts = %(attempt)s AND status = 'running'

-- complete_model --
-- Only the attempt that holds the model may complete it.
UPDATE models
   SET status = 'completed', finished_at = now(), metrics = %(metrics)s, fold_metrics = %(fold_metrics)s,
       timings = %(timings)s, progress = jsonb_build_object('phase', 'done', 'fraction', 1, 'at', now())
 WHERE id = %(model_id)s AND status = 'running' AND attempts = %(attempt)s
RETURNING id

-- insert_feature_importances --
-- A training's feature importances, most important first (the view features_log ranks them by position).
INSERT INTO model_features (model_id, method, features, importances)
VALUES (%(model_id)s, %(method)s, %(features)s, %(importances)s)

-- insert_prediction_axes --
-- The bars and actual values of a training's predictions, unless another model's are the same ones.
INSERT INTO prediction_axes (sha256, first_ts, seconds, actual)
VALUES (%(axes)s, %(first_ts)s, %(seconds)s, %(actual)s::real[])
    ON CONFLICT (sha256) DO NOTHING

-- insert_prediction_series --
-- A training's out-of-sample predictions (held-out window, or a walk-forward's stitched series), as one
-- compact row of predicted values and its axes.
INSERT INTO model_prediction_series (model_id, first_ts, predicted, axes)
VALUES (%(model_id)s, %(first_ts)s, %(predicted)s::real[], %(axes)s)

-- insert_blob --
-- A file's blob, or the one of the same bytes stored already, row-locked until the transaction ends (the
-- collection of unlinked blobs cannot remove it under the model about to link to it): inserted = its
-- bytes are to be written.
INSERT INTO blobs (sha256, size, chunks, location)
VALUES (%(sha256)s, %(size)s, %(chunks)s, %(location)s)
    ON CONFLICT (sha256) DO UPDATE SET size = blobs.size
RETURNING xmax = 0 AS inserted

-- insert_blob_chunk --
-- One chunk of a new blob's bytes.
INSERT INTO blob_chunks (sha256, n, bytes) VALUES (%(sha256)s, %(n)s, %(bytes)s)

-- insert_artifact --
-- The model file of a training's result: what it is, and the blob holding it.
INSERT INTO model_artifacts (model_id, format, sha256, size, blob)
VALUES (%(model_id)s, %(format)s, %(sha256)s, %(size)s, %(sha256)s)

-- evict_artifacts --
-- The retention policy's evictions of model files (sql/schema/artifacts.sql), or what it would evict.
SELECT * FROM sfq_evict_artifacts(%(older_than_days)s, %(keep_top)s, %(metric)s, %(descending)s,
                                  %(model_ids)s::bigint[], %(dry_run)s)

-- collect_blobs --
-- Remove the blobs no model links to; what went (with the outside store of those stored there).
SELECT * FROM sfq_collect_blobs()

-- relink_artifact --
-- A rebuilt file's blob linked back to its evicted model, only when its SHA-256 is the recorded one.
UPDATE model_artifacts SET blob = %(sha256)s, evicted_at = NULL
 WHERE model_id = %(model_id)s AND sha256 = %(sha256)s
RETURNING model_id

-- fail_model --
-- Fenced like complete_model: a worker whose attempt was handed on cannot fail the model either.
UPDATE models
   SET status = 'failed', finished_at = now(), error = %(error)s
 WHERE id = %(model_id)s AND status = 'running' AND attempts = %(attempt)s
RETURNING id

-- requeue_model --
-- The attempt was interrupted (shutdown) or hit a transient error: the model waits for its job again.
UPDATE models
   SET status = 'queued', error = %(reason)s
 WHERE id = %(model_id)s AND status = 'running' AND attempts = %(attempt)s
RETURNING id

-- give_up_model --
-- The job ran out of tries; only the model's current job may fail it.
UPDATE models
   SET status = 'failed', finished_at = now(), error = %(error)s
 WHERE id = %(model_id)s AND job_id = %(job_id)s AND status IN ('queued', 'running')

-- fetch_job --
-- A listening worker's fetch (Procrastinate's fetch_job's columns), and whether it is registered asleep.
SELECT (f.job).id, (f.job).status, (f.job).task_name, (f.job).priority, (f.job).lock, (f.job).queueing_lock,
       (f.job).args, (f.job).scheduled_at, (f.job).queue_name, (f.job).attempts, (f.job).worker_id, f.asleep
  FROM sfq_fetch_job(%(queues)s::varchar[], %(worker_id)s, %(channel)s) AS f

-- stop_sleeping --
-- A listening worker that stops: its "asleep" and "sleeper" locks and its sfq_sleepers rows go.
SELECT sfq_wake_up(ARRAY(SELECT DISTINCT hashtext(q) FROM unnest(%(queues)s::varchar[]) AS q), %(worker_id)s)

-- beat --
-- A daemon's beat: its workers' heartbeats, and the fleet's round when it is due (sfq_beat); the round's rows.
SELECT kind, what
  FROM sfq_beat(%(workers)s::bigint[], %(host)s, %(pid)s, %(instance)s, %(stale_after_s)s, %(max_attempts)s,
                %(round_every_s)s)

-- prune_finished_jobs --
-- Delete up to a batch of finished queue jobs older than the retention; how many went.
SELECT sfq_prune_finished_jobs(make_interval(secs => %(older_than_s)s), %(batch)s)

-- prune_requests --
-- Delete up to a batch of the oldest accepted requests received before the retention; how many went.
SELECT sfq_prune_requests(make_interval(secs => %(older_than_s)s), %(batch)s)

-- may_vacuum_queue --
-- Whether this role may VACUUM the queue's tables, the requests and the counters' changes (it owns them, or
-- is a superuser).
SELECT bool_and(pg_has_role(current_user, c.relowner, 'MEMBER'))
  FROM pg_class c
 WHERE c.oid IN ('procrastinate_jobs'::regclass, 'procrastinate_events'::regclass, 'training_requests'::regclass,
                 'sfq_job_count_changes'::regclass, 'sfq_model_count_changes'::regclass,
                 'sfq_training_duration_changes'::regclass)

-- may_vacuum_beats --
-- Whether this role may VACUUM the beats' tables (it owns them, or is a superuser).
SELECT bool_and(pg_has_role(current_user, c.relowner, 'MEMBER'))
  FROM pg_class c
 WHERE c.oid IN ('procrastinate_workers'::regclass, 'sfq_workers'::regclass, 'sfq_sleepers'::regclass,
                 'sfq_fleet_round'::regclass)

-- vacuum_queue --
-- Reclaim the dead rows of the queue's tables, the requests and the counters' changes (each job updates its
-- row twice and is deleted once; requests are deleted; folds delete changes) after a prune: outside a
-- transaction; autovacuum may be off.
VACUUM (ANALYZE) procrastinate_jobs, procrastinate_events, training_requests, sfq_job_count_changes,
                 sfq_model_count_changes, sfq_training_duration_changes

-- analyze_jobs --
-- New statistics for procrastinate_jobs when the fleet's round asks (sfq_beat's 'analyze'): every session's
-- cached plans on it are made again, for the table as it now is.
ANALYZE procrastinate_jobs

-- vacuum_beats --
-- Reclaim the dead rows of the beats' tables (each beat updates its workers' rows; sleepers come and go)
-- when the fleet's round asks (sfq_beat's 'vacuum'): outside a transaction; autovacuum may be off. A table
-- another VACUUM holds is skipped: that one does it.
VACUUM (SKIP_LOCKED) procrastinate_workers, sfq_workers, sfq_sleepers, sfq_fleet_round

-- get_model --
-- Everything stored about one model, with its file's SHA-256 and size.
SELECT m.*, m.spec, a.sha256 AS artifact_sha256, a.size AS artifact_size
  FROM models m LEFT JOIN model_artifacts a ON a.model_id = m.id
 WHERE m.id = %(model_id)s

-- model_features --
-- A model's feature importances, ranked (1 = most important).
SELECT feature, importance, rank, method FROM features_log WHERE model_id = %(model_id)s ORDER BY rank

-- symbols --
-- Each symbol and timeframe with its bar count and time span.
SELECT symbol, timeframe, count(*) AS bars, min(ts) AS first, max(ts) AS last
  FROM bars GROUP BY symbol, timeframe ORDER BY symbol, timeframe

-- count_models --
-- What the counters (sql/schema/counts.sql) say of a page of list_models' filters: how many models match
-- (total) and how many of them are completed, with the completed models and all models in the database.
SELECT coalesce(sum(models) FILTER (WHERE matches), 0)::bigint AS total,
       coalesce(sum(models) FILTER (WHERE matches AND status = 'completed'), 0)::bigint AS completed,
       coalesce(sum(models) FILTER (WHERE status = 'completed'), 0)::bigint AS all_completed,
       coalesce(sum(models), 0)::bigint AS everything
  FROM (SELECT models, status,
               (%(status)s::text IS NULL OR status = %(status)s::sfq_model_status)
               AND (%(symbol)s::text IS NULL OR symbol = upper(%(symbol)s))
               AND (%(algorithm)s::text IS NULL OR algorithm = %(algorithm)s) AS matches
          FROM sfq_model_counts) AS c

-- list_models --
-- Filter, sort by id or by a stored metric (a leaderboard), paginate by offset or after a row (keyset).
-- The completed models with the metric come first, by it then id, the others last by id: two parts, the
-- second only once the first runs out (a nested loop over the parts, in their order). {key}: the metric's
-- indexed expression, or NULL for the id order; {order} ASC or DESC, {after} < or >. after_*: the row the
-- page starts after (part 0: one with the metric, 1: one without). Each part is read one way, or not at
-- all: {walk0} and {walk1} walk an index in the page's order, {sort0} and {sort1} read the matching models
-- through the filters' indexes and sort them; gateway.list_models sets the one it chose from count_models
-- to TRUE, the others to FALSE (a part set to FALSE is no part of the plan).
SELECT id, status, symbol, timeframe, algorithm, target_col, target_transform, horizon, fingerprint,
       data_end, submitted_at, started_at, finished_at, attempts, worker_host, worker_pid, error, metrics,
       parent_model_id, progress, part, sort_value
  FROM (VALUES (0), (1)) AS parts(part)
 CROSS JOIN LATERAL (
        (SELECT *, {key} AS sort_value
           FROM models
          WHERE parts.part = 0 AND {walk0} AND status = 'completed' AND {key} IS NOT NULL
            AND (%(status)s::text IS NULL OR status = %(status)s::sfq_model_status)
            AND (%(symbol)s::text IS NULL OR symbol = upper(%(symbol)s))
            AND (%(algorithm)s::text IS NULL OR algorithm = %(algorithm)s)
            AND (%(after_part)s::integer IS NULL
                 OR %(after_part)s = 0 AND ({key}, id) {after} (%(after_value)s::double precision, %(after_id)s))
          ORDER BY {key} {order}, id {order}
          LIMIT %(limit)s + %(offset)s)
        UNION ALL
        (SELECT *, {key} AS sort_value
           FROM models
          WHERE parts.part = 0 AND {sort0} AND status = 'completed' AND {key} IS NOT NULL
            AND (%(status)s::text IS NULL OR status = %(status)s::sfq_model_status)
            AND (%(symbol)s::text IS NULL OR symbol = upper(%(symbol)s))
            AND (%(algorithm)s::text IS NULL OR algorithm = %(algorithm)s)
            AND (%(after_part)s::integer IS NULL
                 OR %(after_part)s = 0 AND ({key}, id) {after} (%(after_value)s::double precision, %(after_id)s))
          ORDER BY ({key}, id) {order}  -- the same order, as a row: no index has it, so read by the filters
          LIMIT %(limit)s + %(offset)s)
        UNION ALL
        (SELECT *, NULL::double precision
           FROM models
          WHERE parts.part = 1 AND {walk1} AND NOT (status = 'completed' AND {key} IS NOT NULL)
            AND (%(status)s::text IS NULL OR status = %(status)s::sfq_model_status)
            AND (%(symbol)s::text IS NULL OR symbol = upper(%(symbol)s))
            AND (%(algorithm)s::text IS NULL OR algorithm = %(algorithm)s)
            AND (%(after_part)s::integer IS NULL OR %(after_part)s = 0 OR id {after} %(after_id)s)
          ORDER BY id {order}
          LIMIT %(limit)s + %(offset)s)
        UNION ALL
        (SELECT *, NULL::double precision
           FROM models
          WHERE parts.part = 1 AND {sort1} AND NOT (status = 'completed' AND {key} IS NOT NULL)
            AND (%(status)s::text IS NULL OR status = %(status)s::sfq_model_status)
            AND (%(symbol)s::text IS NULL OR symbol = upper(%(symbol)s))
            AND (%(algorithm)s::text IS NULL OR algorithm = %(algorithm)s)
            AND (%(after_part)s::integer IS NULL OR %(after_part)s = 0 OR id {after} %(after_id)s)
          ORDER BY id + 0 {order}  -- the same order, not the index's: read by the filters
          LIMIT %(limit)s + %(offset)s)) AS page
 LIMIT %(limit)s OFFSET %(offset)s

-- models_progress --
-- What `sfq submit --wait`, `sfq watch` and the demo poll.
SELECT id, status::text, error, metrics, worker_host, worker_pid, progress, symbol, algorithm
  FROM models WHERE id = ANY(%(model_ids)s) ORDER BY id

-- set_calendar --
-- A symbol's trading calendar (for annualising its backtests).
INSERT INTO symbol_calendars (symbol, calendar) VALUES (%(symbol)s, %(calendar)s)
    ON CONFLICT (symbol) DO UPDATE SET calendar = excluded.calendar

-- create_incoming_bars --
-- A temporary table for a bars import (dropped at commit).
CREATE TEMP TABLE incoming_bars (LIKE bars) ON COMMIT DROP

-- copy_incoming_bars --
-- COPY the import's bars into the temporary table.
COPY incoming_bars (symbol, timeframe, ts, open, high, low, close, volume) FROM STDIN

-- upsert_incoming_bars --
-- The upsert's (inserted, updated) counts, counted here rather than a row per bar sent to the client.
WITH upserted AS (
    INSERT INTO bars SELECT * FROM incoming_bars
        ON CONFLICT (symbol, timeframe, ts) DO UPDATE
       SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
           volume = excluded.volume
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated
  FROM upserted

-- lock_migrations --
-- One `sfq db upgrade` at a time, until its transaction ends.
SELECT pg_advisory_xact_lock(hashtext('sfq migrations'))

-- create_migrations_table --
-- The record of applied migrations, created on first use.
CREATE TABLE IF NOT EXISTS sfq_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- applied_migrations --
-- Each applied migration with the checksum it had.
SELECT name, checksum FROM sfq_migrations

-- has_procrastinate_schema --
-- Whether Procrastinate's tables exist.
SELECT to_regclass('procrastinate_jobs') IS NOT NULL

-- ping --
-- The database answers (GET /healthz).
SELECT 1

-- has_sfq_tables --
-- Whether sfq's tables exist (a fresh database is built from sql/schema, an existing one upgraded).
SELECT to_regclass('models') IS NOT NULL

-- forget_procrastinate_versions --
-- Before recording the version Procrastinate's schema is at now.
DELETE FROM sfq_migrations WHERE starts_with(name, 'procrastinate/')

-- set_schema_search_path --
-- sfq's schema (that of its tables) then pg_temp, until the end of the transaction: where sql/schema/'s
-- definitions go, and the search_path its SECURITY DEFINER functions keep.
SELECT set_config('search_path',
                  (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'models'::regclass)
                  || ', pg_temp', true)

-- has_sfq_schema --
-- What a worker checks at start-up (needs no privilege): sfq's tables and Procrastinate's exist.
SELECT to_regclass('procrastinate_jobs') IS NOT NULL AND to_regclass('models') IS NOT NULL

-- record_migration --
-- Record a migration (or a repeatable file's new checksum) as applied.
INSERT INTO sfq_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)
    ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()

-- forecast_inputs --
-- What a live forecast needs: the model's spec and the bar it forecasts from (a model with a file).
SELECT f.model_id, f.as_of, m.spec
  FROM model_forecasts f JOIN models m ON m.id = f.model_id JOIN model_artifacts a ON a.model_id = m.id
 WHERE f.id = %(forecast_id)s AND f.status = 'queued'

-- complete_forecast --
-- A forecast's answer, written once (only while it is queued).
UPDATE model_forecasts
   SET status = 'completed', finished_at = now(), prediction = %(prediction)s,
       reference_close = %(reference_close)s, predicted_price = %(predicted_price)s, error = NULL
 WHERE id = %(forecast_id)s AND status = 'queued'

-- fail_forecast --
-- A forecast that could not be made, with why (only while it is queued).
UPDATE model_forecasts SET status = 'failed', finished_at = now(), error = %(error)s
 WHERE id = %(forecast_id)s AND status = 'queued'

-- request_simulation --
-- Ask for a backtest of a completed model with a strategy and its parameters.
SELECT * FROM sfq_request_simulation(%(model_id)s, %(strategy)s, %(params)s::jsonb, %(priority)s)

-- request_default_simulation --
-- In a training's result transaction: its default backtest (long_short, default parameters).
SELECT id FROM sfq_request_simulation(%(model_id)s)

-- simulation_inputs --
-- What a queued backtest needs: the model's spec and data end, the strategy, whether it is the lockbox's
-- (which reads the model's file), the symbol's calendar, its job and the model's trace context.
SELECT s.model_id, s.job_id, s.strategy, s.params, s.lockbox, m.spec, m.data_end, m.fingerprint, m.traceparent,
       coalesce((SELECT c.calendar FROM symbol_calendars c WHERE c.symbol = m.symbol), 'equity') AS calendar
  FROM simulation_history s JOIN models m ON m.id = s.model_id
 WHERE s.id = %(simulation_id)s AND s.status = 'queued'

-- request_lockbox --
-- A model's one evaluation on its lockbox (counted as a look every time it is asked for).
SELECT * FROM sfq_request_lockbox(%(model_id)s)

-- simulation_bars --
-- The bars of the held-out window, up to the model's data end (never later bars: the backtest of a
-- model does not change when new bars arrive).
SELECT ts, open, high, low, close, volume
  FROM bars
 WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts >= %(start)s AND ts <= %(data_end)s
 ORDER BY ts

-- complete_simulation --
-- A backtest's metrics and equity curve, written once (only while it is queued).
UPDATE simulation_history
   SET status = 'completed', finished_at = now(), error = NULL, metrics = %(metrics)s,
       equity_curve = %(equity_curve)s, period_start = %(period_start)s, period_end = %(period_end)s
 WHERE id = %(simulation_id)s AND status = 'queued'

-- fail_simulation --
-- A backtest that could not run, with why (only while it is queued).
UPDATE simulation_history SET status = 'failed', finished_at = now(), error = %(error)s
 WHERE id = %(simulation_id)s AND status = 'queued'

-- get_simulation --
-- One backtest with its equity curve and the model's symbol and timeframe.
SELECT s.id, s.model_id, s.strategy, s.params, s.convention, s.lockbox, s.status, s.error, s.period_start,
       s.period_end, s.metrics, s.equity_curve, s.imported_from, s.created_at, s.finished_at, m.symbol,
       m.timeframe, m.lockbox_looks
  FROM simulation_history s JOIN models m ON m.id = s.model_id
 WHERE s.id = %(simulation_id)s

-- model_simulations --
-- A model's backtests, without their equity curves.
SELECT id, model_id, strategy, params, convention, lockbox, status, error, period_start, period_end, metrics,
       imported_from, created_at, finished_at
  FROM simulation_history WHERE model_id = %(model_id)s ORDER BY id

-- submit_sweep --
-- A sweep: one model per grid combination, enqueued in one statement (sfq_submit_sweep).
SELECT * FROM sfq_submit_sweep(%(base)s::jsonb, %(grid)s::jsonb, %(priority)s, %(via)s)

-- get_sweep --
-- A sweep's request and enqueue figures.
SELECT * FROM sweeps WHERE id = %(sweep_id)s

-- sweep_progress --
-- A sweep's models counted by status.
SELECT m.status::text, count(DISTINCT m.id) AS models
  FROM sweep_models sm JOIN models m ON m.id = sm.model_id
 WHERE sm.sweep_id = %(sweep_id)s
 GROUP BY m.status

-- sweep_models --
-- Every model of a sweep with its held-out metrics and its default backtest's metrics.
SELECT DISTINCT ON (m.id) m.id AS model_id, sm.position, sm.combination, m.status::text, m.symbol,
       m.algorithm, m.metrics, s.metrics AS backtest
  FROM sweep_models sm
  JOIN models m ON m.id = sm.model_id
  LEFT JOIN simulation_history s
    ON s.model_id = m.id AND s.status = 'completed' AND s.imported_from IS NULL AND s.convention = 'label'
   AND NOT s.lockbox AND s.strategy = 'long_short'
   AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                       (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))
 WHERE sm.sweep_id = %(sweep_id)s
 ORDER BY m.id, sm.position

-- sweep_equity_curves --
-- The equity curves of a sweep's default backtests (trading the label), for its PBO.
SELECT DISTINCT ON (m.id) m.id AS model_id, s.equity_curve
  FROM sweep_models sm
  JOIN models m ON m.id = sm.model_id
  JOIN simulation_history s
    ON s.model_id = m.id AND s.status = 'completed' AND s.imported_from IS NULL AND s.convention = 'label'
   AND NOT s.lockbox AND s.strategy = 'long_short' AND s.equity_curve IS NOT NULL
   AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                       (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))
 WHERE sm.sweep_id = %(sweep_id)s
 ORDER BY m.id

-- unfinished_models --
-- The ids of every queued and running model.
SELECT id FROM models WHERE status IN ('queued', 'running') ORDER BY id

-- status_workers --
-- Training workers seen in the last hour: who, how fresh, and what each is training.
SELECT w.id AS worker_id, sw.host, sw.pid, sw.instance, sw.started_at,
       extract(epoch FROM now() - coalesce(w.last_heartbeat, sw.last_seen)) AS silent_s,
       w.id IS NOT NULL AS registered, m.id AS model_id, m.started_at AS since, m.progress
  FROM sfq_workers sw
  LEFT JOIN procrastinate_workers w ON w.id = sw.worker_id
  LEFT JOIN procrastinate_jobs j ON j.worker_id = sw.worker_id AND j.status = 'doing' AND j.task_name = 'train_model'
  LEFT JOIN models m ON m.id = (j.args->>'model_id')::bigint AND m.status = 'running'
 WHERE sw.last_seen > now() - interval '1 hour'
 ORDER BY sw.host, sw.instance, sw.worker_id

-- queue_depth --
-- Queue jobs counted by queue and status, from the counters (sql/schema/counts.sql).
SELECT queue_name AS queue, status::text, jobs
  FROM sfq_job_counts WHERE jobs <> 0 ORDER BY queue_name, status

-- throughput --
-- Models finished per minute over the last `minutes` minutes.
SELECT minute, count(m.id) FILTER (WHERE m.status = 'completed') AS completed,
       count(m.id) FILTER (WHERE m.status = 'failed') AS failed
  FROM generate_series(date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
                       date_trunc('minute', now()), interval '1 minute') AS minute
  LEFT JOIN models m
    ON m.finished_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
   AND date_trunc('minute', m.finished_at) = minute
 GROUP BY minute ORDER BY minute

-- recent_failures --
-- The last failed models with their reasons.
SELECT id, symbol, algorithm, finished_at, error
  FROM models WHERE status = 'failed' ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT %(limit)s

-- duration_histogram --
-- Cumulative counts of training durations (last attempt) per algorithm over the bounds they are counted
-- in (sfq_duration_bounds), for a Prometheus histogram, from the counters (sql/schema/counts.sql).
SELECT t.algorithm, sum(t.models)::bigint AS count, sum(t.seconds) AS sum, sfq_duration_bounds() AS bounds,
       array(SELECT coalesce(sum(d.models), 0)::bigint
               FROM unnest(sfq_duration_bounds()) AS b(le)
               LEFT JOIN sfq_training_durations d ON d.algorithm = t.algorithm AND d.le <= b.le
              GROUP BY b.le ORDER BY b.le) AS buckets
  FROM sfq_training_durations t
 GROUP BY t.algorithm HAVING sum(t.models) > 0
 ORDER BY t.algorithm

-- finished_recently --
-- Models completed and failed over the last `minutes` minutes.
SELECT count(*) FILTER (WHERE status = 'completed') AS completed, count(*) FILTER (WHERE status = 'failed') AS failed
  FROM models WHERE finished_at > now() - make_interval(mins => %(minutes)s)

-- default_backtest --
-- The backtest every trained model gets (long_short, default parameters, trading its label), as
-- sweep_models finds it.
SELECT s.id, s.status, s.error, s.metrics, s.equity_curve, s.period_start, s.period_end
  FROM simulation_history s
 WHERE s.model_id = %(model_id)s AND s.imported_from IS NULL AND s.convention = 'label' AND NOT s.lockbox
   AND s.strategy = 'long_short'
   AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                       (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))

-- buy_and_hold --
-- Buy-and-hold's equity over a backtest's period (1.0 at its first close), from the same bars.
SELECT ts, close / first_value(close) OVER (ORDER BY ts) AS equity
  FROM bars
 WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts BETWEEN %(start)s AND %(end)s
 ORDER BY ts

-- compared_models --
-- The models of the dashboard's comparison page, by id: status, spec and held-out metrics.
SELECT id, status::text, symbol, timeframe, algorithm, target_col, horizon, models.spec, metrics
  FROM models WHERE id = ANY(%(model_ids)s) ORDER BY id

-- default_backtests --
-- Several models' default backtests in one statement (as default_backtest finds each), one row per model
-- that has one, the latest when there are several.
SELECT DISTINCT ON (s.model_id) s.model_id, s.id, s.status, s.error, s.metrics, s.equity_curve,
       s.period_start, s.period_end
  FROM simulation_history s
 WHERE s.model_id = ANY(%(model_ids)s) AND s.imported_from IS NULL AND s.convention = 'label'
   AND NOT s.lockbox AND s.strategy = 'long_short'
   AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                       (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))
 ORDER BY s.model_id, s.id DESC

-- recent_sweeps --
-- The last sweeps with how many of their models have finished.
SELECT s.id, s.created_at, s.combinations, s.created,
       (SELECT count(m.id) FILTER (WHERE m.status IN ('completed', 'failed', 'cancelled'))
          FROM sweep_models sm JOIN models m ON m.id = sm.model_id WHERE sm.sweep_id = s.id) AS finished
  FROM (SELECT * FROM sweeps ORDER BY id DESC LIMIT %(limit)s) AS s
 ORDER BY s.id DESC

-- models_unsettled --
-- How many of these models are unfinished or wait for their default backtest (what benchmarks poll).
SELECT (SELECT count(*) FROM models WHERE id = ANY(%(model_ids)s) AND status IN ('queued', 'running'))
     + (SELECT count(*) FROM simulation_history WHERE model_id = ANY(%(model_ids)s) AND status = 'queued')

-- model_timings --
-- Each model's phase timings and its seconds from claim to finish, by id (the benchmarks' cost per job).
SELECT id, timings, extract(epoch FROM finished_at - started_at)::float8 AS seconds
  FROM models WHERE id = ANY(%(model_ids)s) ORDER BY id

-- prediction_series_size --
-- How many out-of-sample predictions these models store (held-out or walk-forward), and their bytes (what
-- the walk-forward benchmark reports; the axes counted whole for each model, though models predicting the
-- same bars share them).
SELECT coalesce(sum(cardinality(s.predicted)), 0)::bigint AS predictions,
       coalesce(sum(pg_column_size(s.predicted) + pg_column_size(s.first_ts) + pg_column_size(s.model_id)
                     + coalesce(pg_column_size(s.seconds) + pg_column_size(s.actual),
                                pg_column_size(x.seconds) + pg_column_size(x.actual), 0)), 0)::bigint AS bytes
  FROM model_prediction_series s LEFT JOIN prediction_axes x ON x.sha256 = s.axes
 WHERE s.model_id = ANY(%(model_ids)s)

-- jobs_left --
-- How many of these queue jobs have not succeeded yet (what the no-op benchmark waits for).
SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(%(job_ids)s) AND status <> 'succeeded'

-- create_study --
-- A study: checked, recorded, its first advance deferred (sfq_create_study).
SELECT * FROM sfq_create_study(%(study)s::jsonb, %(via)s)

-- stop_study --
-- Ask a study for no more trials (sfq_stop_study); its running trials finish.
SELECT * FROM sfq_stop_study(%(study_id)s)

-- get_study --
-- A study's definition and state.
SELECT * FROM studies WHERE id = %(study_id)s

-- recent_studies --
-- The latest studies, newest first, with their trials counted.
SELECT s.id, s.name, s.state, s.sampler, s.pruner, s.objectives, s.created_at,
       (SELECT count(*) FROM study_trials t WHERE t.study_id = s.id) AS trials
  FROM studies s ORDER BY s.id DESC LIMIT %(limit)s

-- study_trials --
-- Every trial of a study with its model's status, its core-seconds (its attempts' time, none when reused)
-- and its model's default backtest (for the DSR of the best).
SELECT t.number, t.model_id, t.state, t.params, t."values", t.fold_values, t.parent_number, t.mutation,
       t.error, t.asked_at, t.finished_at, m.status::text AS model_status, m.metrics,
       CASE WHEN t.state = 'reused' THEN 0 ELSE coalesce(
           (SELECT sum(extract(epoch FROM coalesce(a.ended_at, now()) - a.started_at))
              FROM model_attempts a WHERE a.model_id = t.model_id), 0) END AS cpu_seconds,
       (SELECT s.metrics FROM simulation_history s
         WHERE s.model_id = t.model_id AND s.status = 'completed' AND s.imported_from IS NULL
           AND s.convention = 'label' AND NOT s.lockbox AND s.strategy = 'long_short'
           AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                               (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))
         LIMIT 1) AS backtest
  FROM study_trials t LEFT JOIN models m ON m.id = t.model_id
 WHERE t.study_id = %(study_id)s
 ORDER BY t.number

-- lock_study --
-- A study's row, locked for this transaction: one advance or fold report at a time appends to its journal.
SELECT * FROM studies WHERE id = %(study_id)s FOR UPDATE

-- study_journal --
-- Optuna's journal of a study from entry `first` on, in order.
SELECT entry FROM study_journal WHERE study_id = %(study_id)s AND n >= %(first)s ORDER BY n

-- append_study_journal --
-- Optuna's new journal entries, numbered on from the study's journal_length (under the study's row lock).
WITH counter AS (
    UPDATE studies SET journal_length = journal_length + jsonb_array_length(%(entries)s::jsonb)
     WHERE id = %(study_id)s
    RETURNING journal_length - jsonb_array_length(%(entries)s::jsonb) AS first
)
INSERT INTO study_journal (study_id, n, entry)
SELECT %(study_id)s, counter.first + e.i - 1, e.entry
  FROM counter, jsonb_array_elements(%(entries)s::jsonb) WITH ORDINALITY AS e(entry, i)

-- ended_trials --
-- A study's running trials whose model has ended, with how it ended.
SELECT t.number, t.model_id, m.status::text AS status, m.metrics, m.error
  FROM study_trials t JOIN models m ON m.id = t.model_id
 WHERE t.study_id = %(study_id)s AND t.state = 'running' AND m.status IN ('completed', 'failed', 'cancelled')
 ORDER BY t.number

-- study_budget --
-- What a study has spent: trials by state, and core-seconds (its trained models' attempts, each once).
SELECT count(*) AS trials,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state IN ('complete', 'reused')) AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       coalesce((SELECT sum(extract(epoch FROM coalesce(a.ended_at, now()) - a.started_at))
                   FROM model_attempts a
                  WHERE a.model_id IN (SELECT model_id FROM study_trials
                                        WHERE study_id = %(study_id)s AND state <> 'reused')), 0) AS cpu_seconds,
       (SELECT array_agg(DISTINCT error) FROM study_trials WHERE study_id = %(study_id)s AND state = 'failed')
           AS errors
  FROM study_trials WHERE study_id = %(study_id)s

-- live_training_workers --
-- Training workers registered with Procrastinate now: a study's default number of trials at once.
SELECT count(*) AS workers FROM sfq_workers s JOIN procrastinate_workers w ON w.id = s.worker_id

-- insert_trial --
-- A trial the sampler asked for, with its model (none when its point could not be trained).
INSERT INTO study_trials (study_id, number, model_id, state, params, "values", parent_number, mutation, error,
                          finished_at)
VALUES (%(study_id)s, %(number)s, %(model_id)s, %(state)s, %(params)s, %(values)s, %(parent_number)s,
        %(mutation)s, %(error)s, CASE WHEN %(state)s = 'running' THEN NULL ELSE now() END)

-- settle_trial --
-- How a trial ended, once its model did.
UPDATE study_trials SET state = %(state)s, "values" = %(values)s, error = %(error)s, finished_at = now()
 WHERE study_id = %(study_id)s AND number = %(number)s

-- submit_trial --
-- A study's trial as a training request (sfq_submit_trial), by the worker advancing the study.
SELECT model_id, fingerprint, deduplicated, id AS request_id, target_col
  FROM sfq_submit_trial(%(study_id)s, %(request)s::jsonb)

-- trial_model --
-- The model of a study's trial (an evolution's parent).
SELECT model_id FROM study_trials WHERE study_id = %(study_id)s AND number = %(number)s

-- finish_study --
-- A study's end: finished (its budget spent) or failed (every trial failed), with why.
UPDATE studies SET state = %(state)s, reason = %(reason)s, finished_at = now() WHERE id = %(study_id)s

-- pruning_trials --
-- The running trials a model is, in studies that prune.
SELECT t.study_id, t.number FROM study_trials t JOIN studies s ON s.id = t.study_id
 WHERE t.model_id = %(model_id)s AND t.state = 'running' AND s.state = 'running' AND s.pruner <> 'none'
 ORDER BY t.study_id

-- record_fold --
-- A trial's first objective at one CV fold, as it ended.
UPDATE study_trials SET fold_values = fold_values || jsonb_build_object(%(fold)s::text, %(value)s::float8)
 WHERE study_id = %(study_id)s AND number = %(number)s

-- prune_model --
-- A study's pruner stopped the model's training: cancelled with why, its folds so far kept; fenced like
-- complete_model.
UPDATE models
   SET status = 'cancelled', finished_at = now(), error = %(reason)s, fold_metrics = %(fold_metrics)s,
       progress = jsonb_build_object('phase', 'pruned', 'fraction', 1, 'at', now())
 WHERE id = %(model_id)s AND status = 'running' AND attempts = %(attempt)s
RETURNING id
-- move_alias --
-- Point a strategy's alias at a completed model, with who and why, in one statement (sfq_move_alias).
SELECT * FROM sfq_move_alias(%(strategy)s, %(alias)s, %(model_id)s, %(reason)s, %(actor)s, %(via)s)

-- get_strategy --
-- A named strategy.
SELECT name, created_at FROM strategies WHERE name = %(name)s

-- strategy_aliases --
-- A strategy's aliases, each with its model, the model's held-out metrics, its latest forecast and its live
-- record (the model's realised forecasts scored and paper-traded by the workers).
SELECT a.alias, a.model_id, a.moved_at, m.status::text AS model_status, m.symbol, m.timeframe, m.algorithm,
       m.target_col, m.target_transform, m.horizon, m.metrics AS held_out,
       r.forecasts, r.realised, r.metrics AS live, r.equity_curve AS live_equity_curve, r.updated_at AS live_updated_at,
       f.id AS latest_forecast_id, f.as_of AS latest_as_of, f.status AS latest_status,
       f.prediction AS latest_prediction, f.predicted_price AS latest_predicted_price
  FROM strategy_aliases a JOIN models m ON m.id = a.model_id
  LEFT JOIN model_live_records r ON r.model_id = a.model_id
  LEFT JOIN LATERAL (SELECT * FROM model_forecasts f WHERE f.model_id = a.model_id ORDER BY f.as_of DESC LIMIT 1) f
    ON true
 WHERE a.strategy = %(name)s
 ORDER BY a.alias

-- strategy_alias_records --
-- Every alias of every strategy with its model and its live record's headline figures and decay flag (as
-- the workers stored them: no scan of forecasts), for GET /metrics and the dashboard's strategies page.
SELECT a.strategy, a.alias, a.model_id, a.moved_at, m.symbol, m.timeframe, m.algorithm,
       coalesce(r.forecasts, 0) AS forecasts, coalesce(r.realised, 0) AS realised,
       r.metrics->'directional_accuracy' AS directional_accuracy, r.metrics->'ic' AS ic,
       r.metrics->'decay' AS decay, r.updated_at AS live_updated_at
  FROM strategy_aliases a JOIN models m ON m.id = a.model_id
  LEFT JOIN model_live_records r ON r.model_id = a.model_id
 ORDER BY a.strategy, a.alias

-- strategy_history --
-- Every alias move of a strategy, newest first (append-only).
SELECT id, alias, model_id, previous_model_id, moved_by, db_role, via, reason, moved_at
  FROM strategy_alias_history WHERE strategy = %(name)s ORDER BY id DESC

-- set_retrain_policy --
-- Set a strategy alias's retrain policy, objective and tolerance, checked (sfq_set_retrain_policy).
SELECT * FROM sfq_set_retrain_policy(%(strategy)s, %(alias)s, %(policy)s::jsonb, %(tolerance)s, %(objective)s,
                                     %(actor)s, %(via)s)

-- strategy_retrain_policies --
-- A strategy's retrain policies, by alias.
SELECT alias, kind, policy, cron, objective, sfq_retrain_objectives()->objective->>'direction' AS direction,
       tolerance, every_n_bars, bars_pending, last_due_at, set_by, via, set_at
  FROM retrain_policies WHERE strategy = %(name)s ORDER BY alias

-- strategy_retrains --
-- A strategy's retrains, newest first, each with its champion/challenger decision (none yet while it trains).
SELECT id, alias, cause, due_at, source_model_id, model_id, error, objective, direction, tolerance, requested_at,
       champion_model_id, champion_value, challenger_value, verdict, reason, history_id, decided_at
  FROM strategy_retrains WHERE strategy = %(name)s ORDER BY id DESC LIMIT %(limit)s

-- live_record_inputs --
-- What a model's live record needs: its spec and its symbol's calendar.
SELECT m.spec, coalesce((SELECT c.calendar FROM symbol_calendars c WHERE c.symbol = m.symbol), 'equity') AS calendar
  FROM models m WHERE m.id = %(model_id)s

-- model_live_forecasts --
-- A model's answered forecasts, oldest first, with their realised values (null until their bar arrives).
SELECT as_of, prediction, realised FROM model_forecasts
 WHERE model_id = %(model_id)s AND status = 'completed' ORDER BY as_of

-- save_live_record --
-- A model's live record, never replaced by one computed from fewer forecasts (workers race on it).
INSERT INTO model_live_records AS r (model_id, forecasts, realised, metrics, equity_curve, updated_at)
VALUES (%(model_id)s, %(forecasts)s, %(realised)s, %(metrics)s, %(equity_curve)s, now())
    ON CONFLICT (model_id) DO UPDATE
   SET forecasts = excluded.forecasts, realised = excluded.realised, metrics = excluded.metrics,
       equity_curve = excluded.equity_curve, updated_at = now()
 WHERE (excluded.forecasts, excluded.realised) >= (r.forecasts, r.realised)
-- cancel_waiting_jobs --
-- The waiting queue jobs of these models, cancelled: a baseline of the scale-out benchmark ran the models.
UPDATE procrastinate_jobs SET status = 'cancelled'
 WHERE status = 'todo' AND task_name = 'train_model' AND (args->>'model_id')::bigint = ANY(%(model_ids)s)

-- model_forecasts_with_bars --
-- A model's forecasts, oldest first, with the bars their realised value needs after as_of and those there.
SELECT f.id, f.as_of, f.status, f.prediction, f.predicted_price, f.realised, f.realised_at, f.error,
       coalesce((m.spec_extra->>'execution_lag')::integer, 0) + m.horizon AS needs,
       (SELECT count(*) FROM bars b WHERE b.symbol = m.symbol AND b.timeframe = m.timeframe
                                      AND b.ts > f.as_of) AS bars_after
  FROM model_forecasts f JOIN models m ON m.id = f.model_id
 WHERE f.model_id = %(model_id)s ORDER BY f.as_of

-- live_record_counts --
-- How many forecasts and realised values a model's live record counts.
SELECT forecasts, realised FROM model_live_records WHERE model_id = %(model_id)s
