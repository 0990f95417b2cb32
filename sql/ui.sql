-- Named queries of the dashboard (/ui, queue_app/ui/); the others it uses are in queries.sql.

-- default_backtest --
-- The backtest every trained model gets (long_short, default parameters), as sweep_models finds it.
SELECT s.id, s.status, s.error, s.metrics, s.equity_curve, s.period_start, s.period_end
  FROM simulation_history s
 WHERE s.model_id = %(model_id)s AND s.imported_from IS NULL AND s.strategy = 'long_short'
   AND s.params = sfq_canonical_params('params', 'strategy long_short', '{}',
                                       (SELECT parameters FROM sfq_strategies WHERE name = 'long_short'))

-- buy_and_hold --
-- Buy-and-hold's equity over a backtest's period (1.0 at its first close), from the same bars.
SELECT ts, close / first_value(close) OVER (ORDER BY ts) AS equity
  FROM bars
 WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ts BETWEEN %(start)s AND %(end)s
 ORDER BY ts

-- recent_sweeps --
SELECT s.id, s.created_at, s.combinations, s.created,
       count(m.id) FILTER (WHERE m.status IN ('completed', 'failed', 'cancelled')) AS finished
  FROM sweeps s
  LEFT JOIN sweep_models sm ON sm.sweep_id = s.id
  LEFT JOIN models m ON m.id = sm.model_id
 GROUP BY s.id ORDER BY s.id DESC LIMIT %(limit)s
