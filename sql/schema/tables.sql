-- sfq's tables, types, indexes and comments as they are now: what sql/migrations/0001..0009 build, in
-- one file. `sfq db upgrade` runs it on a database without sfq's tables (and records every migration as
-- applied); an existing database gets its pending migrations instead. Functions, triggers and privileges
-- are not here: they are the repeatable files of sql/schema/, applied after this one.
--
-- A migration that changes a table changes this file the same way, columns in the order the migration
-- leaves them (ADD COLUMN appends): training_requests and models are also row types used positionally
-- (sfq_new_model), and tests/test_schema.py compares a database built from this file with one upgraded
-- through every migration.

-- ---------------------------------------------------------------------------------------------------
-- Registries, written by sql/schema/registry.sql (generated from the workers' registries).

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

-- Regime kinds and their parameters (workers/regimes.py).
CREATE TABLE sfq_regimes (
    name text PRIMARY KEY,
    description text NOT NULL,
    parameters jsonb NOT NULL  -- {param: {default, rules: [...], expects}}, as sfq_algorithms
);

-- Backtest strategies and their parameters (workers/simulation.py).
CREATE TABLE sfq_strategies (
    name text PRIMARY KEY,
    description text NOT NULL,
    parameters jsonb NOT NULL  -- {param: {default, rules: [...], expects}}, as sfq_algorithms
);

-- ---------------------------------------------------------------------------------------------------
-- Bars.

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

CREATE TABLE symbol_calendars (
    symbol text PRIMARY KEY,
    calendar text NOT NULL CHECK (calendar IN ('equity', '24x7'))  -- workers/modelling/backtest.py CALENDARS
);
COMMENT ON TABLE symbol_calendars IS 'A symbol''s trading calendar for annualisation (none recorded: equity).';

CREATE TABLE bar_revisions (
    symbol text NOT NULL,
    timeframe text NOT NULL,
    revision bigint NOT NULL,
    revised_at timestamptz NOT NULL,
    PRIMARY KEY (symbol, timeframe)
);
COMMENT ON TABLE bar_revisions IS
    'How many statements revised the bars of a symbol and timeframe (changed, deleted or backfilled bars).';

-- ---------------------------------------------------------------------------------------------------
-- Models and their results.

CREATE TYPE sfq_model_status AS ENUM ('queued', 'running', 'completed', 'failed', 'cancelled');

CREATE TABLE models (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL,
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
    job_id bigint,       -- the model's current training job: only this job may run it
    retrain_of bigint REFERENCES models (id),
    run integer NOT NULL DEFAULT 1,
    imported_from text,  -- 'duckdb:<file>#<legacy id>' for models moved from the old service
    priority integer NOT NULL DEFAULT 0,
    progress jsonb,      -- {"phase", "fraction", "at"} of the training under way
    lockbox_looks integer NOT NULL DEFAULT 0,
    traceparent text,
    spec_extra jsonb NOT NULL  -- what of the spec no column holds (0031): models.spec, sql/schema/models.sql
);
COMMENT ON COLUMN models.spec_extra IS
    'The hashed spec''s fields that no column holds (spec_version 2, execution_lag, bars_revision, lockbox_start, '
    'evaluation), or the whole spec when the columns do not rebuild it. models.spec (a function) is the spec.';
COMMENT ON COLUMN models.lockbox_looks IS 'How many times the model''s lockbox evaluation was asked for.';
COMMENT ON COLUMN models.traceparent IS
    'The W3C trace context of the request that made the model: its training and backtests are spans of that trace.';

-- One live model per fingerprint; a failed or cancelled model may be submitted again.
-- Every lookup by fingerprint is of the live model (0025 dropped the index of all of them: about 100 B a model).
CREATE UNIQUE INDEX models_fingerprint_live ON models (fingerprint)
    WHERE status NOT IN ('failed', 'cancelled');
-- The leaderboard's filters and sorts (0017): a filter then the id order; each stored metric it sorts on
-- (vocabulary.SORTABLE_METRICS), over the completed models.
CREATE INDEX models_status ON models (status, id);
CREATE INDEX models_symbol ON models (symbol, id);
CREATE INDEX models_algorithm ON models (algorithm, id);
-- A symbol with an algorithm (0033): the pair's models, whichever of them are few.
CREATE INDEX models_symbol_algorithm ON models (symbol, algorithm, id);
CREATE INDEX models_metric_directional_accuracy ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'directional_accuracy') = 'number' THEN (metrics ->> 'directional_accuracy')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_directional_base_rate ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'directional_base_rate') = 'number' THEN (metrics ->> 'directional_base_rate')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_ic ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'ic') = 'number' THEN (metrics ->> 'ic')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_mae ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'mae') = 'number' THEN (metrics ->> 'mae')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_n ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'n') = 'number' THEN (metrics ->> 'n')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_r2 ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'r2') = 'number' THEN (metrics ->> 'r2')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_rmse ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'rmse') = 'number' THEN (metrics ->> 'rmse')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_directional_accuracy_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_directional_accuracy_mean') = 'number' THEN (metrics ->> 'cv_directional_accuracy_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_ic_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_ic_mean') = 'number' THEN (metrics ->> 'cv_ic_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_r2_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_r2_mean') = 'number' THEN (metrics ->> 'cv_r2_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_cv_rmse_mean ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'cv_rmse_mean') = 'number' THEN (metrics ->> 'cv_rmse_mean')::double precision END), id)
    WHERE status = 'completed';
CREATE INDEX models_metric_naive_rmse ON models
    ((CASE WHEN jsonb_typeof(metrics -> 'naive_rmse') = 'number' THEN (metrics ->> 'naive_rmse')::double precision END), id)
    WHERE status = 'completed';
-- Throughput over the last minutes, and the last failures (0017).
CREATE INDEX models_finished_at ON models (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX models_failures ON models (finished_at DESC NULLS LAST, id DESC) WHERE status = 'failed';
CREATE INDEX models_parent ON models (parent_model_id) WHERE parent_model_id IS NOT NULL;
CREATE INDEX models_retrain_of ON models (retrain_of) WHERE retrain_of IS NOT NULL;
-- A legacy model is imported once: the live ones are kept unique by their fingerprint already, and this
-- index does it for the failed and cancelled ones, which the fingerprint index leaves out.
CREATE UNIQUE INDEX models_imported_from ON models (imported_from) WHERE imported_from IS NOT NULL;

-- A model's feature importances, one row of arrays in rank order (0025: a row per feature took 1.5 KB a
-- model, this one about 0.5); read a row per feature through the view features_log (sql/schema/models.sql).
CREATE TABLE model_features (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    method text NOT NULL,  -- impurity, abs_coefficient, permutation or legacy
    features text[] NOT NULL,  -- most important first: a feature's rank is its position
    importances double precision[] NOT NULL,
    CHECK (cardinality(features) = cardinality(importances))
);

CREATE TABLE model_predictions (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    ts timestamptz NOT NULL,
    predicted double precision NOT NULL,
    actual double precision NOT NULL,
    PRIMARY KEY (model_id, ts)
);

-- The bars and actual values of out-of-sample predictions, stored once for every model that predicts the
-- same bars of the same label (a sweep over hyperparameters, algorithms or features: 0020).
CREATE TABLE prediction_axes (
    sha256 text PRIMARY KEY,  -- of first_ts, the offsets and the actual values (gateway._axes)
    first_ts timestamptz NOT NULL,
    seconds integer[] NOT NULL,  -- each prediction's bar, in seconds after first_ts
    actual real[] NOT NULL,
    CHECK (cardinality(seconds) = cardinality(actual))
);
COMMENT ON TABLE prediction_axes IS
    'Predictions'' bars and actual values, stored once for all the models predicting the same ones.';

CREATE TABLE model_prediction_series (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    first_ts timestamptz NOT NULL,
    seconds integer[],  -- each prediction's bar, in seconds after first_ts (NULL: the axes' ones)
    predicted real[] NOT NULL,
    actual real[],  -- NULL: the axes' ones
    axes text REFERENCES prediction_axes (sha256),
    CONSTRAINT model_prediction_series_check CHECK (
        CASE WHEN axes IS NULL
             THEN cardinality(seconds) = cardinality(predicted) AND cardinality(predicted) = cardinality(actual)
             ELSE seconds IS NULL AND actual IS NULL END)
);
COMMENT ON TABLE model_prediction_series IS
    'A model''s out-of-sample predictions (held-out window or walk-forward), float4; since 0020 the held-out '
    'ones too, and their bars and actual values in prediction_axes (4 bytes a prediction of its own).';
COMMENT ON TABLE model_predictions IS
    'Held-out predictions of models trained before 0020, a row per bar (newer ones: model_prediction_series).';

-- Model files by the SHA-256 of their bytes, each stored once (0020): in 8 MiB chunks, or in the store
-- outside PostgreSQL that SFQ_ARTIFACT_STORE names (location). queue_app/artifact_store.py writes and reads them.
CREATE TABLE blobs (
    sha256 text PRIMARY KEY CONSTRAINT blobs_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL CHECK (size >= 0),
    chunks integer NOT NULL CHECK (chunks >= 0),  -- rows in blob_chunks (0 when stored outside)
    location text,  -- NULL: in blob_chunks; else the URL of the store holding it (SFQ_ARTIFACT_STORE)
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE blobs IS
    'Model files by the SHA-256 of their bytes, each stored once; removed when no model links to it.';

CREATE TABLE blob_chunks (
    sha256 text NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
    n integer NOT NULL CHECK (n >= 0),
    bytes bytea NOT NULL,
    PRIMARY KEY (sha256, n)
);
COMMENT ON TABLE blob_chunks IS 'A blob''s bytes in order, 8 MiB a chunk (artifact_store.CHUNK_BYTES).';

-- What each model's file is (recorded when it was trained), and the blob holding it (NULL once evicted).
CREATE TABLE model_artifacts (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    format text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    blob text REFERENCES blobs (sha256),
    evicted_at timestamptz
);
COMMENT ON COLUMN model_artifacts.blob IS
    'The blob holding the file''s bytes; NULL once evicted (the file is rebuilt by retraining when needed).';
COMMENT ON COLUMN model_artifacts.sha256 IS 'The SHA-256 recorded when the model was trained; reads check it.';
CREATE INDEX model_artifacts_blob ON model_artifacts (blob);

-- One row per attempt at training a model: who ran it, when, and how it ended (completed, failed,
-- requeued, lost, abandoned). Kept by a trigger on models, so every path is logged the same way.
CREATE TABLE model_attempts (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    job_id bigint,
    worker_host text,
    worker_pid integer,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    outcome text,
    PRIMARY KEY (model_id, attempt)
);

-- ---------------------------------------------------------------------------------------------------
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
    deduplicated boolean,
    run integer DEFAULT 1,
    retrain_of bigint,
    spec jsonb,  -- the canonical spec while the request is accepted; not kept (0025): its model's spec
    priority integer DEFAULT 0,
    execution_lag integer DEFAULT 1,
    evaluation jsonb DEFAULT '{"kind": "holdout"}',
    lockbox_start timestamptz,
    traceparent text
);

COMMENT ON COLUMN training_requests.symbol IS 'Ticker whose bars the model trains on (required).';
COMMENT ON COLUMN training_requests.timeframe IS 'Bar timeframe, e.g. 1d, 1h, 5m.';
COMMENT ON COLUMN training_requests.target_col IS 'Price predicted: open, high, low or close.';
COMMENT ON COLUMN training_requests.target_transform IS
    'log_return, pct_change, diff (target_col at t+execution_lag+horizon against the close at t+execution_lag) '
    'or raw (the level).';
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
COMMENT ON COLUMN training_requests.cv_strategy IS
    'expanding (growing window), sliding (fixed-size window) or purged (k-fold with purging and embargo).';
COMMENT ON COLUMN training_requests.context_symbols IS
    'Other symbols whose bars feed features (the spec''s features, computed on each, aligned on time).';
COMMENT ON COLUMN training_requests.alpha_grid IS 'alpha values tuned by an inner time-series CV.';
COMMENT ON COLUMN training_requests.l1_ratio_grid IS 'l1_ratio values tuned by an inner time-series CV.';
COMMENT ON COLUMN training_requests.regime_configs IS
    'JSON array of regimes: {"kind": "volatility"|"trend", "mode": "feature"|"split", ...} (sfq_regimes).';
COMMENT ON COLUMN training_requests.parent_model_id IS 'Model this one evolves from (not part of the fingerprint).';
COMMENT ON COLUMN training_requests.timeout_s IS
    'Seconds before training is killed and the model fails; NULL = the workers'' default (not fingerprinted).';
COMMENT ON COLUMN training_requests.run IS
    'Run number of an otherwise identical spec: 1 by default; a forced retrain takes the next free one.';
COMMENT ON COLUMN training_requests.retrain_of IS 'Model this one retrains (not part of the fingerprint).';
COMMENT ON COLUMN training_requests.priority IS
    'Queue priority, -100..100 (higher first); single requests 0, sweeps -10 by default. Not fingerprinted.';
COMMENT ON COLUMN training_requests.execution_lag IS
    'Bars from the signal''s close to the entry''s close (0..100, default 1): the label and the backtest run '
    'from the close at t + execution_lag to target_col at t + execution_lag + horizon.';
COMMENT ON COLUMN training_requests.lockbox_start IS
    'Start of a final period no metric, backtest, leaderboard or sweep sees (null: none); at or before data_end.';
COMMENT ON COLUMN training_requests.traceparent IS
    'W3C trace context (00-<trace id>-<span id>-<flags>) the model''s training and backtest spans belong to.';
COMMENT ON COLUMN training_requests.evaluation IS
    'How the model is judged out of sample: {"kind": "holdout"} (the last test_window bars) or '
    '{"kind": "walk_forward", "refit_every": 21, "window": "expanding" | "sliding", "start": null}.';
COMMENT ON COLUMN training_requests.spec IS
    'Not kept (NULL): the canonical spec that was hashed is its model''s, models.spec (since 0025).';

-- ---------------------------------------------------------------------------------------------------
-- Live forecasts (POST /models/{id}/predict): a worker loads the stored model and predicts from the
-- latest bar. One forecast per model and bar: asking again before a new bar returns the same one.

CREATE TABLE model_forecasts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    as_of timestamptz NOT NULL,  -- the latest bar when asked: the forecast is for as_of + horizon bars
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'completed', 'failed')),
    prediction double precision,       -- in target_transform units
    reference_close double precision,  -- the close at as_of
    predicted_price double precision,  -- the implied target_col price
    error text,
    job_id bigint,
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    realised double precision,
    realised_at timestamptz,
    UNIQUE (model_id, as_of)
);
COMMENT ON COLUMN model_forecasts.realised IS
    'What the forecast predicted, once its bars arrived: the label (training.label) at as_of, in target units.';
COMMENT ON COLUMN model_forecasts.realised_at IS 'The bar that realised it: as_of + execution_lag + horizon bars.';
CREATE INDEX model_forecasts_unrealised ON model_forecasts (model_id) WHERE realised IS NULL;

-- ---------------------------------------------------------------------------------------------------
-- Backtests of a model (workers/simulation.py): the simulation queue's, and the old service's (imported).

CREATE TABLE simulation_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    strategy text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}',
    period_start timestamptz,
    period_end timestamptz,
    metrics jsonb NOT NULL DEFAULT '{}',
    equity_curve jsonb,  -- [[ts, equity], ...]
    imported_from text,
    created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'completed' CHECK (status IN ('queued', 'completed', 'failed')),
    error text,
    job_id bigint,
    finished_at timestamptz,
    convention text NOT NULL DEFAULT 'label' CHECK (convention IN ('legacy', 'label')),
    lockbox boolean NOT NULL DEFAULT false
);
COMMENT ON COLUMN simulation_history.lockbox IS
    'An evaluation on the lockbox (predictions of the stored model from lockbox_start to data_end).';
COMMENT ON COLUMN simulation_history.convention IS
    'label: trades the model''s label (entry execution_lag closes after the signal, exit at target_col '
    'horizon bars later); legacy: computed before 0010 (entered at the next close, held one bar).';
CREATE UNIQUE INDEX simulation_history_run
    ON simulation_history (model_id, strategy, params, coalesce(period_start, '-infinity'),
                           coalesce(period_end, '-infinity'), convention, lockbox);
-- One simulation per model, strategy and parameters (asking again returns it); imported rows keep theirs.
CREATE UNIQUE INDEX simulation_history_request ON simulation_history (model_id, strategy, params, lockbox)
    WHERE imported_from IS NULL AND convention = 'label';

-- ---------------------------------------------------------------------------------------------------
-- Sweeps: a base spec and a grid, one model per combination, all enqueued in one transaction.

CREATE TABLE sweeps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    via text NOT NULL DEFAULT 'sql',
    base jsonb NOT NULL,
    grid jsonb NOT NULL,
    priority integer NOT NULL,
    combinations integer NOT NULL,
    created integer NOT NULL,  -- new models; the others were reused (same fingerprint, live)
    elapsed_ms double precision NOT NULL
);

CREATE TABLE sweep_models (
    sweep_id bigint NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    position integer NOT NULL,  -- the combination's place in the expansion
    combination jsonb NOT NULL,
    model_id bigint NOT NULL REFERENCES models (id),
    deduplicated boolean NOT NULL,
    PRIMARY KEY (sweep_id, position)
);
CREATE INDEX sweep_models_model ON sweep_models (model_id);

-- ---------------------------------------------------------------------------------------------------
-- Who each training worker is (Procrastinate's own table has only an id and a heartbeat): written with
-- the daemon's own heartbeat, for `sfq status` and GET /metrics.

CREATE TABLE sfq_workers (
    worker_id bigint PRIMARY KEY,  -- procrastinate_workers.id of the daemon's training worker
    host text NOT NULL,
    pid integer NOT NULL,
    instance integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);

-- When the fleet's round (rescue, due retrains, forgetting old workers: sfq_beat) last ran, one row: the
-- first daemon to beat after the period runs it, the others skip it.
CREATE TABLE sfq_fleet_round (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    ran_at timestamptz NOT NULL DEFAULT '-infinity',
    daemons integer NOT NULL DEFAULT 0,  -- the daemons that beat within the rescue threshold, at the round (0032)
    jobs_before bigint NOT NULL DEFAULT 0  -- the last job's id at the round: the jobs that waited since (0035)
);
INSERT INTO sfq_fleet_round DEFAULT VALUES;

-- Listening workers asleep, one row a queue, each woken alone through its daemon's own channel (0028;
-- sql/schema/queue.sql, "Waking idle workers"). Unlogged: a row means nothing once its session is gone,
-- and registering asleep writes no WAL.
CREATE UNLOGGED TABLE sfq_sleepers (
    worker_id bigint NOT NULL,  -- procrastinate_workers.id
    queue_name varchar(128) NOT NULL,
    channel text,  -- LISTENed to by the worker's daemon; NULL: an older daemon's, woken by the broadcast
    PRIMARY KEY (worker_id, queue_name)
);
CREATE INDEX sfq_sleepers_queue ON sfq_sleepers (queue_name);

-- Procrastinate's fetch (procrastinate_fetch_job_v2) passes over a job whose lock another live job holds
-- (NOT EXISTS, lock = lock). Without an index on `lock` the plan PostgreSQL took scanned every todo and
-- doing job for each candidate, and a fetch that skips the candidates other fetches hold (SKIP LOCKED)
-- tries one after another: 200 workers woken by a burst of 1,000 jobs spent 18 s on the CPU before any
-- job started (issue 15 part 4). With it, each candidate's check is one index probe (0029).
CREATE INDEX sfq_jobs_live_lock ON procrastinate_jobs (lock) WHERE status IN ('todo', 'doing');

-- ---------------------------------------------------------------------------------------------------
-- Studies: a search over spec fields (Optuna's samplers and pruners), each trial an sfq model. The study
-- is advanced by the workers (an advance_study job whenever a trial ends), never by a long-lived driver.

CREATE TABLE studies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    via text NOT NULL DEFAULT 'sql',
    name text,
    base jsonb NOT NULL,
    space jsonb NOT NULL,
    objectives text[] NOT NULL,
    directions text[] NOT NULL,
    sampler text NOT NULL,
    pruner text NOT NULL,
    n_trials integer,
    cpu_seconds double precision,
    max_parallel integer,  -- NULL: as many as there are live training workers
    priority integer NOT NULL,
    seed integer NOT NULL,
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped', 'finished', 'failed')),
    reason text,
    finished_at timestamptz,
    journal_length integer NOT NULL DEFAULT 0  -- log entries in study_journal
);
COMMENT ON TABLE studies IS
    'A search over spec fields: base request, space, objective(s), sampler, pruner and budget (POST /studies).';

-- One row per trial: the point asked, its model, and how it ended.
CREATE TABLE study_trials (
    study_id bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    number integer NOT NULL,  -- Optuna's trial number
    model_id bigint REFERENCES models (id),
    state text NOT NULL CHECK (state IN ('running', 'complete', 'pruned', 'failed', 'reused')),
    params jsonb NOT NULL,
    "values" double precision[],
    fold_values jsonb NOT NULL DEFAULT '{}',  -- the first objective's score at each CV fold, as it ended
    parent_number integer,  -- evolution: the trial this one mutates
    mutation jsonb,  -- evolution: what changed from the parent
    error text,
    asked_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (study_id, number)
);
CREATE INDEX study_trials_model ON study_trials (model_id);

-- Optuna's own storage for each study: its journal (optuna.storages.JournalStorage's log), appended only
-- under the study's row lock, so the log numbers are consecutive.
CREATE TABLE study_journal (
    study_id bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    n integer NOT NULL,
    entry jsonb NOT NULL,
    PRIMARY KEY (study_id, n)
);
-- Named strategies and their aliases (sql/schema/strategies.sql), and the live track records of models.

CREATE TABLE strategies (
    name text PRIMARY KEY CONSTRAINT strategies_name_format CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE strategies IS 'Named strategies: each points aliases at models (strategy_aliases).';

CREATE TABLE strategy_aliases (
    strategy text NOT NULL REFERENCES strategies (name),
    alias text NOT NULL CONSTRAINT strategy_aliases_alias_format CHECK (alias ~ '^[a-z0-9_-]{1,64}$'),
    model_id bigint NOT NULL REFERENCES models (id),
    moved_at timestamptz NOT NULL,
    PRIMARY KEY (strategy, alias)
);
CREATE INDEX strategy_aliases_model ON strategy_aliases (model_id);
COMMENT ON TABLE strategy_aliases IS 'Where each alias of a strategy points now (moved by sfq_move_alias only).';

CREATE TABLE strategy_alias_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    strategy text NOT NULL REFERENCES strategies (name),
    alias text NOT NULL,
    model_id bigint NOT NULL REFERENCES models (id),
    previous_model_id bigint REFERENCES models (id),
    moved_by text NOT NULL,  -- the API token's name, or the database role of a SQL caller
    db_role text NOT NULL,   -- the database role that made the move (session_user)
    via text NOT NULL,       -- sql, http or cli
    reason text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX strategy_alias_history_strategy ON strategy_alias_history (strategy, id);
COMMENT ON TABLE strategy_alias_history IS
    'Every alias move, append-only: who (token name or database role), when, why, from which model.';

CREATE TABLE model_live_records (
    model_id bigint PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    forecasts integer NOT NULL,  -- completed forecasts
    realised integer NOT NULL,   -- of which realised
    metrics jsonb NOT NULL,      -- score() of the realised ones, and the paper trading's backtest metrics
    equity_curve jsonb,          -- [[ts, equity], ...] of the paper trading (none before a trade closed)
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE model_live_records IS
    'A model''s live track record: its forecasts scored and paper-traded as its backtest trades (workers).';
-- Retrain policies and their champion/challenger decisions (sql/schema/retrains.sql).
CREATE TABLE retrain_policies (
    strategy text NOT NULL,
    alias text NOT NULL,
    kind text NOT NULL CONSTRAINT retrain_policies_kind CHECK (kind IN ('every_n_bars', 'weekly', 'cron')),
    policy jsonb NOT NULL,                -- as set, in canonical form: {"kind": ..., and its fields}
    every_n_bars integer CONSTRAINT retrain_policies_every_n_bars CHECK (every_n_bars >= 1),
    cron text,                            -- weekly's and cron's schedule as a cron expression, in UTC
    objective text NOT NULL,              -- sfq_retrain_objectives(): the metric compared, and its direction
    tolerance double precision NOT NULL,  -- how much worse than the champion the retrained model may be
    bars_pending integer NOT NULL DEFAULT 0,  -- every_n_bars: bars appended since it was set or last retrained
    last_due_at timestamptz,              -- weekly, cron: the last due time retrained (or when it was set)
    set_by text NOT NULL,
    db_role text NOT NULL,
    via text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strategy, alias),
    FOREIGN KEY (strategy, alias) REFERENCES strategy_aliases (strategy, alias) ON DELETE CASCADE,
    CONSTRAINT retrain_policies_schedule CHECK ((kind = 'every_n_bars') = (every_n_bars IS NOT NULL)
                                                AND (kind = 'every_n_bars') = (cron IS NULL))
);
COMMENT ON TABLE retrain_policies IS
    'How each alias of a strategy is retrained: every n bars, weekly or by cron (UTC); set by sfq_set_retrain_policy.';

CREATE TABLE strategy_retrains (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    strategy text NOT NULL REFERENCES strategies (name),
    alias text NOT NULL,
    cause text NOT NULL,                  -- the policy's kind that asked for it
    due_at timestamptz,                   -- weekly, cron: the due time it is for (one retrain each)
    source_model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,  -- the alias's model, retrained
    model_id bigint REFERENCES models (id) ON DELETE CASCADE,  -- the retrained model (the challenger)
    error text,                           -- why no model was submitted (the spec refused on the new data)
    objective text NOT NULL,
    direction text NOT NULL CONSTRAINT strategy_retrains_direction CHECK (direction IN ('maximize', 'minimize')),
    tolerance double precision NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- The decision, when the retrained model ended: the champion it was compared with, both values.
    champion_model_id bigint REFERENCES models (id) ON DELETE CASCADE,
    champion_value double precision,
    challenger_value double precision,
    verdict text CONSTRAINT strategy_retrains_verdict
        CHECK (verdict IN ('promoted', 'candidate', 'unchanged', 'failed')),
    reason text,
    history_id bigint REFERENCES strategy_alias_history (id),  -- the alias move it made
    decided_at timestamptz,
    CONSTRAINT strategy_retrains_once UNIQUE (strategy, alias, due_at)
);
CREATE INDEX strategy_retrains_strategy ON strategy_retrains (strategy, id);
CREATE INDEX strategy_retrains_undecided ON strategy_retrains (model_id) WHERE verdict IS NULL;
COMMENT ON TABLE strategy_retrains IS
    'Every retrain a policy asked for, and its champion/challenger decision with both values.';
-- Counters kept by statement-level triggers (sql/schema/counts.sql): what users are shown without a scan.
-- Each counter is a total plus the changes not folded into it yet, one row per key and backend (the
-- server process of the connection that made them: no two open transactions share one, so concurrent
-- enqueues never wait on each other's counter row); now and then a writer folds the changes into the
-- totals. The views sfq_model_counts, sfq_training_durations and sfq_job_counts (counts.sql) add both up.

-- Models by symbol, algorithm and status: the leaderboard's total for any of its filters.
CREATE TABLE sfq_model_count_totals (
    symbol text NOT NULL,
    algorithm text NOT NULL,
    status sfq_model_status NOT NULL,
    models bigint NOT NULL,
    PRIMARY KEY (symbol, algorithm, status)
);
COMMENT ON TABLE sfq_model_count_totals IS
    'How many models have each symbol, algorithm and status, up to the changes not folded in yet.';
CREATE TABLE sfq_model_count_changes (
    symbol text NOT NULL,
    algorithm text NOT NULL,
    status sfq_model_status NOT NULL,
    models bigint NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (symbol, algorithm, status, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_model_count_changes IS
    'Changes to sfq_model_count_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';

-- Completed models' training times by algorithm and histogram bucket (GET /metrics).
CREATE TABLE sfq_training_duration_totals (
    algorithm text NOT NULL,
    le double precision NOT NULL,  -- the bucket's upper bound in seconds (sfq_duration_bounds), or infinity
    models bigint NOT NULL,
    seconds double precision NOT NULL,
    PRIMARY KEY (algorithm, le)
);
COMMENT ON TABLE sfq_training_duration_totals IS
    'Completed models by algorithm and training-time bucket, with their seconds, up to the changes not folded in yet.';
CREATE TABLE sfq_training_duration_changes (
    algorithm text NOT NULL,
    le double precision NOT NULL,
    models bigint NOT NULL,
    seconds double precision NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (algorithm, le, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_training_duration_changes IS
    'Changes to sfq_training_duration_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';

-- Queue jobs by queue and status (GET /metrics, `sfq status`, the dashboard).
CREATE TABLE sfq_job_count_totals (
    queue_name text NOT NULL,
    status procrastinate_job_status NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (queue_name, status)
);
COMMENT ON TABLE sfq_job_count_totals IS
    'How many queue jobs each queue has in each status, up to the changes not folded in yet.';
CREATE TABLE sfq_job_count_changes (
    queue_name text NOT NULL,
    status procrastinate_job_status NOT NULL,
    jobs bigint NOT NULL,
    backend integer NOT NULL,  -- pg_backend_pid() of the writer
    PRIMARY KEY (queue_name, status, backend)
) WITH (fillfactor = 50);  -- room for HOT updates: a backend's row is rewritten in place
COMMENT ON TABLE sfq_job_count_changes IS
    'Changes to sfq_job_count_totals not folded in yet (added by triggers, folded by sfq_fold_counts).';
