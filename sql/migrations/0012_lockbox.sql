-- sfq 0012: the lockbox. A request's lockbox_start keeps its final period out of everything a model is
-- trained, scored, backtested, ranked and selected on; POST /models/{id}/lockbox evaluates the model there
-- once (a simulation_history row with lockbox = true), and counts on the model every time it is looked at.
ALTER TABLE training_requests ADD COLUMN lockbox_start timestamptz;
COMMENT ON COLUMN training_requests.lockbox_start IS
    'Start of a final period no metric, backtest, leaderboard or sweep sees (null: none); at or before data_end.';
ALTER TABLE models ADD COLUMN lockbox_looks integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN models.lockbox_looks IS 'How many times the model''s lockbox evaluation was asked for.';
ALTER TABLE simulation_history ADD COLUMN lockbox boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN simulation_history.lockbox IS
    'An evaluation on the lockbox (predictions of the stored model from lockbox_start to data_end).';
DROP INDEX simulation_history_run;
CREATE UNIQUE INDEX simulation_history_run
    ON simulation_history (model_id, strategy, params, coalesce(period_start, '-infinity'),
                           coalesce(period_end, '-infinity'), convention, lockbox);
DROP INDEX simulation_history_request;
CREATE UNIQUE INDEX simulation_history_request ON simulation_history (model_id, strategy, params, lockbox)
    WHERE imported_from IS NULL AND convention = 'label';
