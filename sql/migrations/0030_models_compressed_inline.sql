-- sfq 0030: models rows compressed inline (issue 15 part 2); sql/schema/tables.sql says why.
ALTER TABLE models SET (toast_tuple_target = 256);
DO $$
DECLARE
    col name;
BEGIN
    FOR col IN SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = 'models'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                  AND t.typstorage <> 'p'
    LOOP
        EXECUTE format('ALTER TABLE models ALTER COLUMN %I SET STORAGE MAIN', col);
        BEGIN
            EXECUTE format('ALTER TABLE models ALTER COLUMN %I SET COMPRESSION lz4', col);
        EXCEPTION WHEN feature_not_supported THEN  -- a server built without lz4: pglz, its default
        END;
    END LOOP;
END;
$$;
