-- sfq 0016: named strategies and their aliases (a registry), forecasts on every new bar, a live track record.
-- A strategy (`name`) points aliases (production, candidate, ...) at completed models; every move is kept
-- in an append-only history with who, when and why (sql/schema/strategies.sql: sfq_move_alias). When bars
-- arrive, every aliased model on that symbol gets its forecast for each new bar, and every earlier forecast
-- whose target bar arrived gets its realised value (the bars_arrived trigger). A model's live record (the
-- score and paper trading of its realised forecasts, computed by the workers) is model_live_records.
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

ALTER TABLE model_forecasts ADD COLUMN realised double precision, ADD COLUMN realised_at timestamptz;
COMMENT ON COLUMN model_forecasts.realised IS
    'What the forecast predicted, once its bars arrived: the label (training.label) at as_of, in target units.';
COMMENT ON COLUMN model_forecasts.realised_at IS 'The bar that realised it: as_of + execution_lag + horizon bars.';
CREATE INDEX model_forecasts_unrealised ON model_forecasts (model_id) WHERE realised IS NULL;

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
