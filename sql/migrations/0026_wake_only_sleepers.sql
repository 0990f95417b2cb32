-- sfq 0026: an enqueue notifies only when a worker of its queue may be asleep (issue 15 part 5): the
-- statement trigger that notified every enqueueing statement gives way to a deferred one,
-- sfq_jobs_wake_sleepers (sql/schema/queue.sql), that decides at commit, once per transaction and queue.
-- (IF EXISTS: a database upgraded from before 0021 never had them, the schema files come after.)
DROP TRIGGER IF EXISTS sfq_jobs_notify_inserted ON procrastinate_jobs;
DROP FUNCTION IF EXISTS sfq_notify_new_jobs();
