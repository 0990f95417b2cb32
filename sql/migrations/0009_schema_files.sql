-- sfq 0009: every function, trigger and function privilege is now defined in sql/schema/ (repeatable files,
-- applied by `sfq db upgrade` after the migrations), and a new database is built from sql/schema/tables.sql.
--
-- From here on, a migration holds what cannot be repeated: new tables, columns and indexes (made in
-- sql/schema/tables.sql too), data changes, and the drop of a function that is retired or whose arguments or
-- result change (its new definition goes to sql/schema/). Migrations 0001-0008 stay as they were: their
-- checksums are recorded in existing databases.
--
-- This one drops what sql/schema/ no longer defines:
--   - sfq_canonical_value: unused since 0003 (sfq_canonical_param took its place);
--   - sfq_defer_training(bigint): one model's job; sfq_defer_training(bigint[], integer[]) defers any number
--     of models' jobs in one call, for every path (requests, sweeps, rescue).
-- and forgets sql/registry.sql, which is sql/schema/registry.sql now.
DROP FUNCTION sfq_canonical_value(text, text, jsonb, jsonb);
DROP FUNCTION sfq_defer_training(bigint);
DELETE FROM sfq_migrations WHERE name = 'registry.sql';
