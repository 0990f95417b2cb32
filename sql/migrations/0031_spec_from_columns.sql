-- sfq 0031: a model's spec is rebuilt from its row, not stored beside the columns it repeats (issue 15
-- part 2: 768 B of JSON in a completed Ridge's 1,976 B row, four rows to an 8 KB page).
--
-- models.spec_extra keeps what of the spec no column holds; spec(models) (sql/schema/models.sql) puts the
-- spec back together, so `m.spec` reads it as before. A model made before keeps its whole spec in
-- spec_extra, which spec() returns as it is: the fingerprints stay those of the bytes hashed. (Its row is no
-- smaller: only the new models' are.) The UPDATE rewrites every row; VACUUM reclaims the old versions.
ALTER TABLE models ADD COLUMN spec_extra jsonb;
COMMENT ON COLUMN models.spec_extra IS
    'The hashed spec''s fields that no column holds (spec_version 2, execution_lag, bars_revision, lockbox_start, '
    'evaluation), or the whole spec when the columns do not rebuild it. models.spec (a function) is the spec.';
UPDATE models SET spec_extra = spec;
ALTER TABLE models ALTER COLUMN spec_extra SET NOT NULL, DROP COLUMN spec;
