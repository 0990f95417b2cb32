-- sfq 0035: a training job is deferred without Procrastinate's 'deferred' event (sql/schema/queue.sql:
-- about a tenth of a single-row enqueue, issue 15 part 5). The fleet's round told a job that waited
-- unheard for a period by that event's time; it now tells it by its id, at most the last job's at the
-- round before (sfq_beat), which the round records here. Until the first round after the upgrade has
-- run, no job waits unheard: the next one finds them.
ALTER TABLE sfq_fleet_round ADD COLUMN jobs_before bigint NOT NULL DEFAULT 0;
