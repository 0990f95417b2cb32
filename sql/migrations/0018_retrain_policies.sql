-- sfq 0018: a retrain policy per strategy and alias, and champion/challenger (sql/schema/retrains.sql).
-- A policy retrains the alias's model on the bars there are now: every n appended bars (in the bars' own
-- transaction), or on a weekly or cron schedule in UTC (the worker daemons' check, once per due time). When
-- the retrained model ends, its objective is compared with the champion's (the alias's model then): it
-- takes the alias if not worse by more than the tolerance, else the candidate alias; the decision is kept
-- with both numbers in strategy_retrains.
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
