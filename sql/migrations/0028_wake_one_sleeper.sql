-- sfq 0028: an enqueue wakes one sleeping worker a job, not every listening daemon (issue 15 part 4: at 500
-- daemons each job woke about 100 fetches). A listening worker registers asleep in sfq_sleepers, with the
-- channel its daemon LISTENs to (sfq_fetch_job); sfq_wake_sleepers takes one row a job and notifies that
-- channel (sql/schema/queue.sql, "Waking idle workers"). sfq_fetch_job gains the channel and sfq_wake_up
-- the worker: their old signatures go (the new ones are in sql/schema/queue.sql).
CREATE UNLOGGED TABLE sfq_sleepers (
    worker_id bigint NOT NULL,  -- procrastinate_workers.id
    queue_name varchar(128) NOT NULL,
    channel text,  -- LISTENed to by the worker's daemon; NULL: an older daemon's, woken by the broadcast
    PRIMARY KEY (worker_id, queue_name)
);
CREATE INDEX sfq_sleepers_queue ON sfq_sleepers (queue_name);
DROP FUNCTION IF EXISTS sfq_fetch_job(varchar[], bigint);
DROP FUNCTION IF EXISTS sfq_wake_up(integer[]);
