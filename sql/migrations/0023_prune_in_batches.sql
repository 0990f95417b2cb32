-- sfq 0023: finished queue jobs are pruned in batches, by one worker at a time, every minute, with a
-- retention in seconds (SFQ_JOB_RETENTION_S): sfq_prune_finished_jobs(interval, integer) in
-- sql/schema/queue.sql replaces the one that took days and deleted every old job in one statement.
DROP FUNCTION sfq_prune_finished_jobs(integer);
