-- sfq 0015: studies (Optuna samplers and pruners over spec fields, each trial an sfq model), their trials
-- and Optuna's journal for each, in the database like everything else.
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
