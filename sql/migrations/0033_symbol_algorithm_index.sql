-- sfq 0033: the leaderboard filtered by a symbol and an algorithm reads that pair's models from one index
-- (issue 15 part 1). With only (symbol, id) and (algorithm, id), a pair that few models have (an algorithm
-- never run on that symbol) was found by walking one filter's models, or by the metric's index, until a page
-- was full: 2.2 s at 1 M models for a pair with none (sql/queries.sql, list_models).
CREATE INDEX models_symbol_algorithm ON models (symbol, algorithm, id);
