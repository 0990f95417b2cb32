-- sfq/bars: revisions of a symbol's bars. A statement that changes a bar's values, deletes bars, or
-- inserts a bar earlier than one already there (a backfill) adds 1 to bar_revisions for that symbol and
-- timeframe; appending new bars does not (a request pins data_end to the latest bar, so new bars already
-- make a new model). sfq_canonical_request reads the revisions of a request's symbols, in the query that
-- pins its data_end, and puts them into its spec.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

CREATE OR REPLACE FUNCTION sfq_note_bar_revisions() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO bar_revisions AS r (symbol, timeframe, revision, revised_at)
        SELECT n.symbol, n.timeframe, 1, now()
          FROM new_bars n JOIN old_bars o USING (symbol, timeframe, ts)
         WHERE (n.open, n.high, n.low, n.close, n.volume) IS DISTINCT FROM (o.open, o.high, o.low, o.close, o.volume)
         GROUP BY n.symbol, n.timeframe
        ON CONFLICT (symbol, timeframe) DO UPDATE SET revision = r.revision + 1, revised_at = now();
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO bar_revisions AS r (symbol, timeframe, revision, revised_at)
        SELECT symbol, timeframe, 1, now() FROM old_bars GROUP BY symbol, timeframe
        ON CONFLICT (symbol, timeframe) DO UPDATE SET revision = r.revision + 1, revised_at = now();
    ELSE
        -- A backfill: more bars at or after the first inserted one than this statement inserted there.
        INSERT INTO bar_revisions AS r (symbol, timeframe, revision, revised_at)
        SELECT n.symbol, n.timeframe, 1, now()
          FROM (SELECT symbol, timeframe, min(ts) AS first, count(*) AS inserted
                  FROM new_bars GROUP BY symbol, timeframe) n
         WHERE (SELECT count(*) FROM bars b
                 WHERE b.symbol = n.symbol AND b.timeframe = n.timeframe AND b.ts >= n.first) > n.inserted
        ON CONFLICT (symbol, timeframe) DO UPDATE SET revision = r.revision + 1, revised_at = now();
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER bars_revised_by_update AFTER UPDATE ON bars
    REFERENCING OLD TABLE AS old_bars NEW TABLE AS new_bars
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_note_bar_revisions();
CREATE OR REPLACE TRIGGER bars_revised_by_delete AFTER DELETE ON bars
    REFERENCING OLD TABLE AS old_bars
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_note_bar_revisions();
CREATE OR REPLACE TRIGGER bars_backfilled AFTER INSERT ON bars
    REFERENCING NEW TABLE AS new_bars
    FOR EACH STATEMENT EXECUTE FUNCTION sfq_note_bar_revisions();
