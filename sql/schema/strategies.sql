-- sfq/strategies: the registry of named strategies and their aliases, the forecasts every new bar brings
-- to the models they point at, and the realised values those forecasts are scored against.
--
--   - A strategy (`name`) points aliases (production, candidate, any [a-z0-9_-]+) at completed models;
--     sfq_move_alias moves one and records who, when and why in strategy_alias_history, in one statement
--     (both or neither). A member of sfq_submitter may move any alias but production.
--   - The bars_arrived trigger, on every INSERT INTO bars whatever its path (`sfq bars import`, a plain
--     SQL INSERT), in the inserting transaction: first fills in the realised value of every forecast of
--     that symbol whose target bar is now there, then gives every model an alias points at on that symbol
--     a forecast for each new bar appended after the latest one (a backfilled bar is history, not news)
--     and defers its job (queue.sql's sfq_defer_forecast, the `prediction` queue). One forecast per model
--     and bar (model_forecasts' UNIQUE (model_id, as_of)): nothing is done twice.
--   - The workers keep each model's live record (model_live_records) after each of its forecasts.
--   - Then it counts the appended bars for the retrain policies that count bars (retrains.sql), which
--     retrain their alias's model, in the same transaction, every n of them.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- A strategy's or an alias's name: [a-z0-9_-], 1 to 64 characters; otherwise an error naming the field.
CREATE OR REPLACE FUNCTION sfq_registry_name(field text, value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '23502', COLUMN = field, MESSAGE = format('%s: required', field);
    END IF;
    IF value !~ '^[a-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = field,
            MESSAGE = format('%s: %s is not a name of 1 to 64 characters a-z, 0-9, _ or -',
                             field, left(quote_literal(value), 80));
    END IF;
    RETURN value;
END;
$$;

-- Whether a database role may move a strategy's production alias: any role but a member of sfq_submitter
-- that is not also a member of sfq_api (docs/security.md); a superuser always.
CREATE OR REPLACE FUNCTION sfq_may_move_production(role name) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = role)
        OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'sfq_submitter')
        OR NOT pg_has_role(role, 'sfq_submitter', 'MEMBER')
        OR (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'sfq_api') AND pg_has_role(role, 'sfq_api', 'MEMBER'))
$$;

-- Point a strategy's alias at a completed model (the strategy is created on its first alias), recorded in
-- strategy_alias_history with `reason`, the caller's database role, and `actor` (who asked: the API's
-- token name; the database role when null). Moving an alias to where it points already changes nothing
-- and returns its last move. Returns the history row.
CREATE OR REPLACE FUNCTION sfq_move_alias(strategy_name text, alias_name text, model bigint, reason text,
                                          actor text DEFAULT NULL, via text DEFAULT 'sql')
    RETURNS strategy_alias_history
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    m models;
    previous bigint;
    moved strategy_alias_history;
BEGIN
    PERFORM sfq_registry_name('strategy', strategy_name), sfq_registry_name('alias', alias_name);
    IF model IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '23502', COLUMN = 'model_id', MESSAGE = 'model_id: required';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' OR length(reason) > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'reason',
            MESSAGE = 'reason: say why the alias moves (1 to 1000 characters)';
    END IF;
    IF alias_name = 'production' AND NOT sfq_may_move_production(session_user) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('role %s may not move a production alias (a member of sfq_submitter)', session_user);
    END IF;
    SELECT * INTO m FROM models WHERE id = model FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '22023', COLUMN = 'model_id',
            MESSAGE = format('model_id: no model with id %s', model);
    END IF;
    IF m.status <> 'completed' THEN
        RAISE EXCEPTION USING ERRCODE = '55000', COLUMN = 'model_id',
            MESSAGE = format('model_id: model %s is %s; only a completed model can take an alias', model, m.status);
    END IF;
    INSERT INTO strategies (name) VALUES (strategy_name) ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM strategies s WHERE s.name = strategy_name FOR UPDATE;  -- one move of a strategy at a time
    SELECT a.model_id INTO previous FROM strategy_aliases a
     WHERE a.strategy = strategy_name AND a.alias = alias_name;
    IF previous = model THEN
        SELECT * INTO moved FROM strategy_alias_history h
         WHERE h.strategy = strategy_name AND h.alias = alias_name ORDER BY h.id DESC LIMIT 1;
        RETURN moved;
    END IF;
    INSERT INTO strategy_aliases AS a (strategy, alias, model_id, moved_at)
    VALUES (strategy_name, alias_name, model, now())
        ON CONFLICT (strategy, alias) DO UPDATE SET model_id = excluded.model_id, moved_at = excluded.moved_at;
    INSERT INTO strategy_alias_history (strategy, alias, model_id, previous_model_id, moved_by, db_role, via, reason)
    VALUES (strategy_name, alias_name, model, previous, coalesce(actor, session_user), session_user,
            coalesce(via, 'sql'), reason)
    RETURNING * INTO moved;
    RETURN moved;
END;
$$;

-- The history is append-only: rows are never changed or deleted (a TRUNCATE of models still clears it).
CREATE OR REPLACE FUNCTION sfq_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('%s is append-only', TG_TABLE_NAME);
END;
$$;

CREATE OR REPLACE TRIGGER strategy_alias_history_append_only BEFORE UPDATE OR DELETE ON strategy_alias_history
    FOR EACH ROW EXECUTE FUNCTION sfq_append_only();

-- ---------------------------------------------------------------------------------------------------
-- New bars.

-- A label from its two prices: target_col at t + execution_lag + horizon (`future`) against the close at
-- t + execution_lag (`entry`), in a target transform (workers/modelling/training.py TRANSFORMS' `apply`;
-- tests/test_strategies.py checks that they agree).
CREATE OR REPLACE FUNCTION sfq_label(transform text, future double precision, entry double precision)
    RETURNS double precision
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE transform
               WHEN 'log_return' THEN ln(future / entry)
               WHEN 'pct_change' THEN future / entry - 1.0
               WHEN 'diff' THEN future - entry
               WHEN 'raw' THEN future
           END
$$;

-- The statement trigger on INSERT INTO bars (see the top of this file). Runs as the owner (SECURITY
-- DEFINER), like the training requests' triggers: the inserting role need not write forecasts or jobs.
CREATE OR REPLACE FUNCTION sfq_bars_arrived() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    created bigint[];
    forecast bigint;
    appended record;
BEGIN
    -- Forecasts: every aliased model on these symbols, for each bar appended after the latest one there was.
    WITH aliased AS (
        SELECT DISTINCT m.id, m.symbol, m.timeframe
          FROM strategy_aliases a JOIN models m ON m.id = a.model_id
         WHERE m.status = 'completed' AND EXISTS (SELECT 1 FROM model_artifacts x WHERE x.model_id = m.id)
           AND (m.symbol, m.timeframe) IN (SELECT symbol, timeframe FROM new_bars)
    ), appended AS (
        SELECT n.symbol, n.timeframe, n.ts FROM new_bars n
         WHERE (n.symbol, n.timeframe) IN (SELECT symbol, timeframe FROM aliased)
           AND NOT EXISTS (SELECT 1 FROM bars b
                            WHERE b.symbol = n.symbol AND b.timeframe = n.timeframe AND b.ts > n.ts
                              AND (b.symbol, b.timeframe, b.ts) NOT IN (SELECT symbol, timeframe, ts FROM new_bars))
    ), inserted AS (
        INSERT INTO model_forecasts (model_id, as_of)
        SELECT m.id, n.ts FROM aliased m JOIN appended n USING (symbol, timeframe) ORDER BY n.ts, m.id
            ON CONFLICT (model_id, as_of) DO NOTHING
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO created FROM inserted;
    FOREACH forecast IN ARRAY coalesce(created, '{}') LOOP
        PERFORM sfq_defer_forecast(forecast);
    END LOOP;

    -- Realised values: each unrealised forecast on these symbols whose target bar is now there (the ones
    -- just made too: a batch of bars may hold a new forecast's target already).
    UPDATE model_forecasts f SET realised = r.value, realised_at = r.exit_ts
      FROM (SELECT f2.id, x.ts AS exit_ts, sfq_label(m.target_transform, x.price, e.close) AS value
              FROM (SELECT DISTINCT symbol, timeframe FROM new_bars) n
              JOIN models m ON m.symbol = n.symbol AND m.timeframe = n.timeframe
              JOIN model_forecasts f2 ON f2.model_id = m.id AND f2.realised IS NULL
             CROSS JOIN LATERAL (SELECT b.close FROM bars b
                                  WHERE b.symbol = m.symbol AND b.timeframe = m.timeframe AND b.ts >= f2.as_of
                                  ORDER BY b.ts OFFSET coalesce((m.spec_extra->>'execution_lag')::integer, 0) LIMIT 1) e
             CROSS JOIN LATERAL (SELECT b.ts, CASE m.target_col WHEN 'open' THEN b.open WHEN 'high' THEN b.high
                                                                 WHEN 'low' THEN b.low ELSE b.close END AS price
                                   FROM bars b
                                  WHERE b.symbol = m.symbol AND b.timeframe = m.timeframe AND b.ts >= f2.as_of
                                  ORDER BY b.ts
                                 OFFSET coalesce((m.spec_extra->>'execution_lag')::integer, 0) + m.horizon LIMIT 1) x
           ) r
     WHERE f.id = r.id;

    -- Retrain policies counting bars (retrains.sql): the bars appended for each symbol and timeframe.
    FOR appended IN
        WITH counting AS (  -- the few symbols and timeframes a policy counts bars of
            SELECT DISTINCT m.symbol, m.timeframe
              FROM retrain_policies p
              JOIN strategy_aliases a ON a.strategy = p.strategy AND a.alias = p.alias
              JOIN models m ON m.id = a.model_id
             WHERE p.kind = 'every_n_bars' AND (m.symbol, m.timeframe) IN (SELECT symbol, timeframe FROM new_bars)
        )
        SELECT n.symbol, n.timeframe, count(*)::integer AS bars FROM new_bars n JOIN counting USING (symbol, timeframe)
         WHERE NOT EXISTS (SELECT 1 FROM bars b
                            WHERE b.symbol = n.symbol AND b.timeframe = n.timeframe AND b.ts > n.ts
                              AND (b.symbol, b.timeframe, b.ts) NOT IN (SELECT symbol, timeframe, ts FROM new_bars))
         GROUP BY n.symbol, n.timeframe
    LOOP
        PERFORM sfq_retrain_after_bars(appended.symbol, appended.timeframe, appended.bars);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER bars_arrived AFTER INSERT ON bars
    REFERENCING NEW TABLE AS new_bars
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_bars_arrived();
