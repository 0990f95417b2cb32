-- sfq/retrains: a retrain policy per strategy and alias, and champion/challenger.
--
--   - sfq_set_retrain_policy sets how an alias's model is retrained: `every_n_bars` (n >= 1 bars appended
--     for its symbol and timeframe since the policy was set or last retrained), `weekly` (a weekday and a
--     time) or `cron` (five fields), both in UTC; with the objective compared and the tolerance.
--   - A retrain is sfq_retrain of the alias's model: its spec again with data_end at the latest bar (the
--     held-out window and the CV folds move with it, under the same rules), an ordinary training request
--     (deduplicated by its fingerprint), linked to the model it retrains (models.retrain_of) and recorded in
--     strategy_retrains. every_n_bars: in the bars' own transaction (the bars_arrived trigger counts them);
--     weekly and cron: sfq_retrain_due, which the worker daemons run on every heartbeat, once per due time.
--   - When the retrained model ends (sfq_retrain_ended, in the transaction that records it), its objective
--     is compared with the champion's (the model the alias points at then): it takes the alias if not worse
--     by more than the tolerance, else the `candidate` alias; the decision is kept with both values.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- A retrain policy error, naming its field (`policy.n`, `tolerance`, ...) in the message and COLUMN.
CREATE OR REPLACE FUNCTION sfq_reject_policy(field text, problem text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid retrain policy: %s: %s', field, problem),
                          COLUMN = field;
END;
$$;

-- The objectives a retrain is judged by: each study objective's CV mean (cv_ic: the folds' mean of ic),
-- and the same metric on the held-out window (or the walk-forward's out-of-sample bars), in the study
-- objective's direction (registry.sql sfq_study_objectives, from queue_app/search.py OBJECTIVES).
CREATE OR REPLACE FUNCTION sfq_retrain_objectives() RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_object_agg(o.key, jsonb_build_object('metric', o.key || '_mean', 'direction', o.value))
           || jsonb_object_agg(substr(o.key, 4), jsonb_build_object('metric', substr(o.key, 4), 'direction', o.value))
      FROM jsonb_each_text(sfq_study_objectives()) o
$$;

-- One field of a cron expression: a comma list of `*`, `n`, `a-b`, each with an optional `/step` (`n/step`
-- runs to the field's end), within low..high; the sorted values it matches, else an error naming `what`.
CREATE OR REPLACE FUNCTION sfq_cron_field(field text, what text, low integer, high integer) RETURNS integer[]
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    item text;
    part text[];
    first integer;
    last integer;
    step integer;
    matched integer[] := '{}';
BEGIN
    FOREACH item IN ARRAY string_to_array(field, ',') LOOP
        part := regexp_match(item, '^(?:(\*)|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,2}))?$');
        IF part IS NULL THEN
            PERFORM sfq_reject_policy('policy.cron', format('%s %s is not *, a number or a range a-b, with an optional /step',
                                                            what, quote_literal(item)));
        END IF;
        first := coalesce(part[2]::integer, low);
        last := coalesce(part[3]::integer, CASE WHEN part[1] IS NULL AND part[4] IS NULL THEN first ELSE high END);
        step := coalesce(part[4]::integer, 1);
        IF first NOT BETWEEN low AND high OR last NOT BETWEEN low AND high OR first > last OR step < 1 THEN
            PERFORM sfq_reject_policy('policy.cron', format('%s %s is not within %s-%s (with a step of 1 or more)',
                                                            what, quote_literal(item), low, high));
        END IF;
        matched := matched || ARRAY(SELECT generate_series(first, last, step));
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT v FROM unnest(matched) v ORDER BY v);
END;
$$;

-- A cron expression (minute hour day-of-month month day-of-week, UTC; day of week 0-7, 0 and 7 Sunday)
-- as the values each field matches, and whether a day matches its day of month OR its day of week (both
-- restricted, as cron and croniter do) rather than both; an error naming policy.cron when it is not one,
-- or names no day that exists.
CREATE OR REPLACE FUNCTION sfq_cron(expression text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    fields text[] := regexp_split_to_array(btrim(coalesce(expression, '')), '\s+');
    minutes integer[];
    hours integer[];
    doms integer[];
    months integer[];
    dows integer[];
    day_or boolean;
BEGIN
    IF cardinality(fields) <> 5 OR fields[1] = '' THEN
        PERFORM sfq_reject_policy('policy.cron', format('%s is not 5 fields: minute hour day-of-month month day-of-week',
                                                        quote_nullable(left(expression, 80))));
    END IF;
    minutes := sfq_cron_field(fields[1], 'minute', 0, 59);
    hours := sfq_cron_field(fields[2], 'hour', 0, 23);
    doms := sfq_cron_field(fields[3], 'day of month', 1, 31);
    months := sfq_cron_field(fields[4], 'month', 1, 12);
    dows := ARRAY(SELECT DISTINCT d % 7 FROM unnest(sfq_cron_field(fields[5], 'day of week', 0, 7)) d ORDER BY 1);
    day_or := cardinality(doms) < 31 AND cardinality(dows) < 7;
    IF NOT day_or AND NOT EXISTS (
        SELECT 1 FROM unnest(months) m, unnest(doms) d
         WHERE d <= extract(day FROM make_date(2024, m, 1) + interval '1 month' - interval '1 day')) THEN
        PERFORM sfq_reject_policy('policy.cron', format('%s names no day that exists', quote_literal(expression)));
    END IF;
    RETURN jsonb_build_object(
        'minute', minutes, 'hour', hours, 'day', doms, 'month', months, 'weekday', dows, 'day_or', day_or);
END;
$$;

-- The latest time at or before `moment` that a cron expression names (UTC, to the minute); NULL when none in
-- the 8 years before (a 29 February on one weekday only).
CREATE OR REPLACE FUNCTION sfq_cron_latest(expression text, moment timestamptz) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    c jsonb := sfq_cron(expression);
    minutes integer[] := ARRAY(SELECT jsonb_array_elements_text(c->'minute')::integer);
    hours integer[] := ARRAY(SELECT jsonb_array_elements_text(c->'hour')::integer);
    doms integer[] := ARRAY(SELECT jsonb_array_elements_text(c->'day')::integer);
    months integer[] := ARRAY(SELECT jsonb_array_elements_text(c->'month')::integer);
    dows integer[] := ARRAY(SELECT jsonb_array_elements_text(c->'weekday')::integer);
    day_or boolean := (c->>'day_or')::boolean;
    now_ timestamp := date_trunc('minute', moment AT TIME ZONE 'UTC');
    candidate date;
    in_month boolean;
    in_week boolean;
    h integer;
    m integer;
BEGIN
    FOR back IN 0 .. 366 * 8 LOOP
        candidate := now_::date - back;
        in_month := extract(day FROM candidate)::integer = ANY (doms);
        in_week := extract(dow FROM candidate)::integer = ANY (dows);
        CONTINUE WHEN NOT extract(month FROM candidate)::integer = ANY (months)
                   OR NOT CASE WHEN day_or THEN in_month OR in_week ELSE in_month AND in_week END;
        FOR h IN SELECT x FROM unnest(hours) x WHERE back > 0 OR x <= extract(hour FROM now_) ORDER BY x DESC LOOP
            SELECT max(x) INTO m FROM unnest(minutes) x
             WHERE back > 0 OR h < extract(hour FROM now_) OR x <= extract(minute FROM now_);
            IF m IS NOT NULL THEN
                RETURN (candidate + make_interval(hours => h, mins => m)) AT TIME ZONE 'UTC';
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

-- A policy as given, checked, in canonical form with the cron expression it runs by (weekly's too):
-- {"kind": "every_n_bars", "n": 5}, {"kind": "weekly", "weekday": "friday", "time": "21:30"} or
-- {"kind": "cron", "cron": "0 22 * * 1-5"}. An error names the field (policy.kind, policy.n, ...).
CREATE OR REPLACE FUNCTION sfq_check_retrain_policy(policy jsonb, OUT canonical jsonb, OUT n integer, OUT cron text)
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    kinds jsonb := '{"every_n_bars": ["n"], "weekly": ["weekday", "time"], "cron": ["cron"]}';
    kind_names text := (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(kinds) k);
    weekdays text[] := ARRAY['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'];
    kind text;
    extra text;
    hhmm text[];
BEGIN
    IF policy IS NULL OR jsonb_typeof(policy) <> 'object' THEN
        PERFORM sfq_reject_policy('policy', format('must be a JSON object with a kind (%s), got %s', kind_names,
                                                   coalesce(policy::text, 'null')));
    END IF;
    kind := policy->>'kind';
    IF kind IS NULL OR jsonb_typeof(policy->'kind') <> 'string' OR NOT kinds ? kind THEN
        PERFORM sfq_reject_policy('policy.kind', format('must be one of %s, got %s', kind_names,
                                                        coalesce(policy->'kind', 'null')));
    END IF;
    SELECT k INTO extra FROM jsonb_object_keys(policy) k
     WHERE k <> 'kind' AND NOT kinds->kind ? k ORDER BY k LIMIT 1;
    IF extra IS NOT NULL THEN
        PERFORM sfq_reject_policy('policy.' || extra, format('is not a field of a %s policy (its fields: %s)', kind,
            (SELECT string_agg(f, ', ') FROM jsonb_array_elements_text(kinds->kind) f)));
    END IF;
    CASE kind
    WHEN 'every_n_bars' THEN
        IF jsonb_typeof(policy->'n') IS DISTINCT FROM 'number' OR (policy->>'n')::numeric NOT BETWEEN 1 AND 1000000
           OR (policy->>'n')::numeric % 1 <> 0 THEN
            PERFORM sfq_reject_policy('policy.n', format('must be a whole number of bars from 1 to 1000000, got %s',
                                                         coalesce(policy->'n', 'null')));
        END IF;
        n := (policy->>'n')::integer;
        canonical := jsonb_build_object('kind', kind, 'n', n);
    WHEN 'weekly' THEN
        IF jsonb_typeof(policy->'weekday') IS DISTINCT FROM 'string' OR NOT lower(policy->>'weekday') = ANY (weekdays) THEN
            PERFORM sfq_reject_policy('policy.weekday', format('must be one of %s, got %s',
                array_to_string(weekdays, ', '), coalesce(policy->'weekday', 'null')));
        END IF;
        hhmm := regexp_match(CASE jsonb_typeof(policy->'time') WHEN 'string' THEN policy->>'time' END,
                           '^([01]\d|2[0-3]):([0-5]\d)$');
        IF hhmm IS NULL THEN
            PERFORM sfq_reject_policy('policy.time', format('must be HH:MM from 00:00 to 23:59 (UTC), got %s',
                                                            coalesce(policy->'time', 'null')));
        END IF;
        cron := format('%s %s * * %s', hhmm[2]::integer, hhmm[1]::integer,
                       array_position(weekdays, lower(policy->>'weekday')) - 1);
        canonical := jsonb_build_object('kind', kind, 'weekday', lower(policy->>'weekday'),
                                        'time', hhmm[1] || ':' || hhmm[2]);
    WHEN 'cron' THEN
        IF jsonb_typeof(policy->'cron') IS DISTINCT FROM 'string' THEN
            PERFORM sfq_reject_policy('policy.cron', format('must be a cron expression (a string), got %s',
                                                            coalesce(policy->'cron', 'null')));
        END IF;
        cron := regexp_replace(btrim(policy->>'cron'), '\s+', ' ', 'g');
        PERFORM sfq_cron(cron);
        canonical := jsonb_build_object('kind', kind, 'cron', cron);
    END CASE;
END;
$$;

-- Set (or replace) the retrain policy of a strategy's alias, which must point at a model; returns it. Only a
-- role that may move the production alias may set its policy (the policy moves it). `actor` is who asked
-- (the API's token name; the database role when null). A null tolerance is 0, a null objective cv_ic.
CREATE OR REPLACE FUNCTION sfq_set_retrain_policy(strategy_name text, alias_name text, policy jsonb,
                                                  tolerance double precision DEFAULT 0,
                                                  objective text DEFAULT 'cv_ic',
                                                  actor text DEFAULT NULL, via text DEFAULT 'sql')
    RETURNS retrain_policies
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    checked record;
    saved retrain_policies;
BEGIN
    PERFORM sfq_registry_name('strategy', strategy_name), sfq_registry_name('alias', alias_name);
    SELECT * INTO checked FROM sfq_check_retrain_policy(policy);
    tolerance := coalesce(tolerance, 0);
    objective := coalesce(objective, 'cv_ic');
    IF tolerance IN ('NaN', 'Infinity', '-Infinity') THEN
        PERFORM sfq_reject_policy('tolerance', format('must be a finite number in the objective''s units, got %s',
                                                      tolerance));
    END IF;
    IF NOT sfq_retrain_objectives() ? objective THEN
        PERFORM sfq_reject_policy('objective', format('must be one of %s, got %s',
            (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(sfq_retrain_objectives()) k),
            quote_literal(objective)));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM strategies s WHERE s.name = strategy_name) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no strategy named %s', strategy_name);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM strategy_aliases a WHERE a.strategy = strategy_name AND a.alias = alias_name) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('strategy %s has no alias %s: point it at a model first', strategy_name, alias_name);
    END IF;
    IF alias_name = 'production' AND NOT sfq_may_move_production(session_user) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format(
            'role %s may not set the retrain policy of a production alias (a member of sfq_submitter)', session_user);
    END IF;
    INSERT INTO retrain_policies AS p (strategy, alias, kind, policy, every_n_bars, cron, objective, tolerance,
                                       bars_pending, last_due_at, set_by, db_role, via, set_at)
    VALUES (strategy_name, alias_name, checked.canonical->>'kind', checked.canonical, checked.n, checked.cron,
            objective, tolerance, 0, CASE WHEN checked.cron IS NOT NULL THEN now() END,
            coalesce(actor, session_user), session_user, coalesce(via, 'sql'), now())
        ON CONFLICT (strategy, alias) DO UPDATE
       SET kind = excluded.kind, policy = excluded.policy, every_n_bars = excluded.every_n_bars,
           cron = excluded.cron, objective = excluded.objective, tolerance = excluded.tolerance,
           bars_pending = 0, last_due_at = excluded.last_due_at, set_by = excluded.set_by,
           db_role = excluded.db_role, via = excluded.via, set_at = excluded.set_at
    RETURNING * INTO saved;
    RETURN saved;
END;
$$;

-- A metric of a model's stored metrics, NULL when it is not a number (the champion/challenger's values, and
-- the retention's ranking: artifacts.sql).
CREATE OR REPLACE FUNCTION sfq_metric_value(metrics jsonb, metric text) RETURNS double precision
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(metrics->metric) = 'number' THEN (metrics->>metric)::double precision END
$$;

-- Retrain a policy's alias model now (`cause` its kind, `due` the due time of a schedule): the training
-- request, and its row in strategy_retrains. A spec the new data refuses is recorded with its error rather
-- than raised, so that it never refuses the bars that asked for it. Decided at once when the request was
-- deduplicated to a model that has ended already (or to the champion itself: no new bars).
CREATE OR REPLACE FUNCTION sfq_submit_retrain(p retrain_policies, due timestamptz) RETURNS strategy_retrains
    LANGUAGE plpgsql AS $$
DECLARE
    source bigint;
    accepted training_requests;
    problem text;
    r strategy_retrains;
BEGIN
    SELECT a.model_id INTO source FROM strategy_aliases a WHERE a.strategy = p.strategy AND a.alias = p.alias;
    BEGIN
        accepted := sfq_retrain(source, false, 'retrain-policy');
    EXCEPTION WHEN data_exception OR integrity_constraint_violation OR object_not_in_prerequisite_state THEN
        GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
    END;
    INSERT INTO strategy_retrains (strategy, alias, cause, due_at, source_model_id, model_id, error, objective,
                                   direction, tolerance, verdict, reason, decided_at)
    VALUES (p.strategy, p.alias, p.kind, due, source, accepted.model_id, problem, p.objective,
            sfq_retrain_objectives()->p.objective->>'direction', p.tolerance,
            CASE WHEN problem IS NOT NULL THEN 'failed' END, problem, CASE WHEN problem IS NOT NULL THEN now() END)
        ON CONFLICT ON CONSTRAINT strategy_retrains_once DO NOTHING
    RETURNING * INTO r;
    IF r.id IS NOT NULL AND r.verdict IS NULL THEN
        r := sfq_decide_retrain(r.id);
    END IF;
    RETURN r;
END;
$$;

-- The champion/challenger decision of a retrain whose model has ended (else nothing yet): compared with
-- the model the alias points at now, on the retrain's objective. Better, equal, or worse by no more than
-- the tolerance (maximize: challenger >= champion - tolerance; minimize: challenger <= champion + tolerance):
-- the alias moves to it (`promoted`); otherwise, or when either value is missing, it takes the `candidate`
-- alias (`candidate`). A failed or cancelled retrain (`failed`), or one that is the champion itself (no new
-- bars, or moved there meanwhile: `unchanged`), moves nothing. Once per retrain (its row locked, its verdict
-- set); the moves go through sfq_move_alias, by `retrain-policy`, with a reason naming both values.
CREATE OR REPLACE FUNCTION sfq_decide_retrain(retrain bigint) RETURNS strategy_retrains
    LANGUAGE plpgsql AS $$
DECLARE
    r strategy_retrains;
    challenger models;
    champion models;
    metric text;
    outcome text;
    why text;
    moved strategy_alias_history;
BEGIN
    SELECT * INTO r FROM strategy_retrains WHERE id = retrain FOR UPDATE;
    SELECT * INTO challenger FROM models WHERE id = r.model_id;
    IF r.verdict IS NOT NULL OR challenger.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RETURN r;
    END IF;
    SELECT m.* INTO champion FROM strategy_aliases a JOIN models m ON m.id = a.model_id
     WHERE a.strategy = r.strategy AND a.alias = r.alias;
    metric := sfq_retrain_objectives()->r.objective->>'metric';
    r.champion_model_id := champion.id;
    r.champion_value := sfq_metric_value(champion.metrics, metric);
    r.challenger_value := sfq_metric_value(challenger.metrics, metric);
    outcome := CASE
        WHEN challenger.status <> 'completed' THEN 'failed'
        WHEN challenger.id = champion.id THEN 'unchanged'
        WHEN r.direction = 'maximize' AND r.challenger_value >= r.champion_value - r.tolerance THEN 'promoted'
        WHEN r.direction = 'minimize' AND r.challenger_value <= r.champion_value + r.tolerance THEN 'promoted'
        ELSE 'candidate'
    END;
    why := format('retrain %s (%s): model %s %s %s vs champion model %s %s (%s, tolerance %s): %s',
                     r.id, r.cause, challenger.id, r.objective, coalesce(r.challenger_value::text, 'none'),
                     champion.id, coalesce(r.champion_value::text, 'none'), r.direction, r.tolerance,
                     CASE outcome
                         WHEN 'promoted' THEN format('not worse by more than the tolerance; %s moves to it', r.alias)
                         WHEN 'candidate' THEN 'worse by more than the tolerance (or not comparable); it is the candidate'
                         WHEN 'failed' THEN format('the retrained model is %s; nothing moves', challenger.status)
                         ELSE format('the retrain is the model %s points at already (no new bars)', r.alias)
                     END);
    IF outcome = 'promoted' OR (outcome = 'candidate' AND r.alias <> 'candidate') THEN
        moved := sfq_move_alias(r.strategy, CASE outcome WHEN 'promoted' THEN r.alias ELSE 'candidate' END,
                                challenger.id, why, 'retrain-policy', 'retrain-policy');
    END IF;
    UPDATE strategy_retrains
       SET champion_model_id = r.champion_model_id, champion_value = r.champion_value,
           challenger_value = r.challenger_value, verdict = outcome,
           reason = why, history_id = moved.id, decided_at = now()
     WHERE id = r.id
    RETURNING * INTO r;
    RETURN r;
END;
$$;

-- every_n_bars: `appended` bars were appended for a symbol and timeframe (the bars_arrived trigger, in the
-- bars' transaction): each policy whose alias model is on them counts them, and retrains at n.
CREATE OR REPLACE FUNCTION sfq_retrain_after_bars(bar_symbol text, bar_timeframe text, appended integer)
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    p retrain_policies;
BEGIN
    FOR p IN
        UPDATE retrain_policies r SET bars_pending = r.bars_pending + appended
          FROM strategy_aliases a JOIN models m ON m.id = a.model_id
         WHERE r.kind = 'every_n_bars' AND a.strategy = r.strategy AND a.alias = r.alias
           AND m.symbol = bar_symbol AND m.timeframe = bar_timeframe
        RETURNING r.*
    LOOP
        CONTINUE WHEN p.bars_pending < p.every_n_bars;
        UPDATE retrain_policies SET bars_pending = 0 WHERE strategy = p.strategy AND alias = p.alias;
        PERFORM sfq_submit_retrain(p, NULL);
    END LOOP;
END;
$$;

-- weekly and cron: retrain every policy whose latest due time (at or before `moment`) is after the last one it
-- retrained for (or its setting): once per due time however many workers check, and however often (the
-- policy's row locked: a check skips the policies another is deciding, whose commit moves last_due_at past
-- the due time, or whose rollback leaves it to the next check; and strategy_retrains' UNIQUE (strategy,
-- alias, due_at)). Due times missed while no worker ran are caught up by one retrain, for the latest. The
-- worker daemons call it on every heartbeat.
CREATE OR REPLACE FUNCTION sfq_retrain_due(moment timestamptz DEFAULT now()) RETURNS SETOF strategy_retrains
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    p retrain_policies;
    due timestamptz;
    r strategy_retrains;
BEGIN
    FOR p IN SELECT * FROM retrain_policies WHERE cron IS NOT NULL ORDER BY strategy, alias FOR UPDATE SKIP LOCKED
    LOOP
        due := sfq_cron_latest(p.cron, moment);
        CONTINUE WHEN due IS NULL OR due <= p.last_due_at;
        UPDATE retrain_policies SET last_due_at = due WHERE strategy = p.strategy AND alias = p.alias;
        r := sfq_submit_retrain(p, due);
        IF r.id IS NOT NULL THEN
            RETURN NEXT r;
        END IF;
    END LOOP;
END;
$$;

-- A model ended (completed, failed or cancelled): the retrains it is the challenger of are decided, in this
-- transaction (a worker killed before it commits leaves both undone; the model's next end decides).
CREATE OR REPLACE FUNCTION sfq_retrain_ended() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    retrain bigint;
BEGIN
    FOR retrain IN SELECT id FROM strategy_retrains WHERE model_id = NEW.id AND verdict IS NULL ORDER BY id LOOP
        PERFORM sfq_decide_retrain(retrain);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER models_retrain_ended AFTER UPDATE OF status ON models
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION sfq_retrain_ended();
