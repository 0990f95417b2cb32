-- sfq 0029: an index on the lock of Procrastinate's live jobs, which its fetch checks for every candidate
-- job (sql/schema/tables.sql, beside sfq_sleepers, says why: issue 15 part 4).
CREATE INDEX sfq_jobs_live_lock ON procrastinate_jobs (lock) WHERE status IN ('todo', 'doing');
