-- sfq 0004: the DuckDB import (`sfq migrate-duckdb`, docs/legacy-duckdb.md) finds what it imported before.
--
-- A legacy model is imported once: the live ones are kept unique by their fingerprint already, and this
-- index does it for the failed and cancelled ones, which the fingerprint index leaves out.
CREATE UNIQUE INDEX models_imported_from ON models (imported_from) WHERE imported_from IS NOT NULL;
