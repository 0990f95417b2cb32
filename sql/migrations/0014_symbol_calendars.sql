-- sfq 0014: a symbol's trading calendar, for annualising its backtests: equity (252 sessions of 6.5 hours,
-- the default when a symbol has none) or 24x7 (crypto). `sfq bars import --calendar` sets it.
CREATE TABLE symbol_calendars (
    symbol text PRIMARY KEY,
    calendar text NOT NULL CHECK (calendar IN ('equity', '24x7'))  -- workers/modelling/backtest.py CALENDARS
);
COMMENT ON TABLE symbol_calendars IS 'A symbol''s trading calendar for annualisation (none recorded: equity).';
