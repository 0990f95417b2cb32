-- sfq 0010: a model's label is measured from its entry price, and its backtest trades exactly that label.
--
-- A request's execution_lag (default 1) is the bars from the signal's close to the entry's close: the label
-- at t is target_col at t + execution_lag + horizon against the close at t + execution_lag, and the backtest
-- enters at that close and exits at that price (workers/modelling/training.py `label`, backtest.py). Specs
-- of earlier models (spec_version 1) measured the label from the signal's own close: execution_lag 0.
--
-- Backtests computed before this migration entered at the close after the signal and held one bar, an
-- interval the model never predicted: they keep their metrics, marked convention 'legacy', and no
-- leaderboard reads them; asking for the same backtest again computes one under the new convention
-- ('label'). Queued ones will run under the new convention.
ALTER TABLE training_requests ADD COLUMN execution_lag integer DEFAULT 1;
COMMENT ON COLUMN training_requests.execution_lag IS
    'Bars from the signal''s close to the entry''s close (0..100, default 1): the label and the backtest run '
    'from the close at t + execution_lag to target_col at t + execution_lag + horizon.';

COMMENT ON COLUMN training_requests.target_transform IS
    'log_return, pct_change, diff (target_col at t+execution_lag+horizon against the close at t+execution_lag) '
    'or raw (the level).';

ALTER TABLE simulation_history ADD COLUMN convention text NOT NULL DEFAULT 'label'
    CHECK (convention IN ('legacy', 'label'));
COMMENT ON COLUMN simulation_history.convention IS
    'label: trades the model''s label (entry execution_lag closes after the signal, exit at target_col '
    'horizon bars later); legacy: computed before 0010 (entered at the next close, held one bar).';
UPDATE simulation_history SET convention = 'legacy' WHERE status <> 'queued' OR imported_from IS NOT NULL;
DROP INDEX simulation_history_run;
CREATE UNIQUE INDEX simulation_history_run
    ON simulation_history (model_id, strategy, params, coalesce(period_start, '-infinity'),
                           coalesce(period_end, '-infinity'), convention);
DROP INDEX simulation_history_request;
CREATE UNIQUE INDEX simulation_history_request ON simulation_history (model_id, strategy, params)
    WHERE imported_from IS NULL AND convention = 'label';
