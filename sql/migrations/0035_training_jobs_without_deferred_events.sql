-- sfq 0035: a training job is deferred without Procrastinate's 'deferred' event (sql/schema/queue.sql:
-- 5-10 % of the single-row enqueue rate, issue 15 part 5). The fleet's round told a job that waited
-- unheard for a period by that event's time; it now tells it by its id: at most the last job's at the
-- round before (sfq_beat), which each round records here. The first round after the upgrade wakes nobody
-- for a job waiting unheard; the next one does.
ALTER TABLE sfq_fleet_round ADD COLUMN jobs_before bigint NOT NULL DEFAULT 0;
