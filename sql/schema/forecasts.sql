-- sfq/forecasts: live forecasts of trained models.
--
-- Repeatable: applied by `sfq db upgrade` after the migrations (see requests.sql).

-- Live forecasts (POST /models/{id}/predict): a worker loads the stored model and predicts from the
-- latest bar. One forecast per model and bar: asking again before a new bar returns the same one (a failed
-- one, or one whose job ended without answering, is tried again). Its job: queue.sql's sfq_defer_forecast.
CREATE OR REPLACE FUNCTION sfq_request_forecast(model bigint) RETURNS model_forecasts
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    m models := sfq_model(model);
    latest timestamptz;
    f model_forecasts;
BEGIN
    IF m.status <> 'completed' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s is %s: only a completed model can predict', model, m.status);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM model_artifacts a WHERE a.model_id = model) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('model %s has no stored model file to predict with', model);
    END IF;
    SELECT max(ts) INTO latest FROM bars WHERE symbol = m.symbol AND timeframe = m.timeframe;
    IF latest IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('no %s bars for %s to predict from', m.timeframe, m.symbol);
    END IF;
    INSERT INTO model_forecasts (model_id, as_of) VALUES (model, latest)
        ON CONFLICT (model_id, as_of) DO NOTHING RETURNING * INTO f;
    IF FOUND THEN
        PERFORM sfq_defer_forecast(f.id);
    ELSE
        SELECT * INTO f FROM model_forecasts WHERE model_id = model AND as_of = latest FOR UPDATE;
        -- Asked again: a failed forecast, or one whose job ended without answering, is tried again.
        IF f.status = 'failed' OR (f.status = 'queued' AND NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs j WHERE j.id = f.job_id AND j.status IN ('todo', 'doing'))) THEN
            PERFORM sfq_defer_forecast(f.id);
        END IF;
    END IF;
    SELECT * INTO f FROM model_forecasts WHERE id = f.id;
    RETURN f;
END;
$$;
