-- sfq 0013: bars revisions. A bar changed or deleted, or a bar inserted before one already there (a
-- backfill), revises the history of its symbol and timeframe (triggers: sql/schema/bars.sql); the revision
-- is part of a new request's fingerprint, so the same request after a revision trains again instead of
-- returning a model that rests on bars it never saw. Revision 0 (never revised) hashes as before.
CREATE TABLE bar_revisions (
    symbol text NOT NULL,
    timeframe text NOT NULL,
    revision bigint NOT NULL,
    revised_at timestamptz NOT NULL,
    PRIMARY KEY (symbol, timeframe)
);
COMMENT ON TABLE bar_revisions IS
    'How many statements revised the bars of a symbol and timeframe (changed, deleted or backfilled bars).';
