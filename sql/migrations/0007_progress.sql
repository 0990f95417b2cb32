-- sfq 0007: live progress of a training on its model row: {"phase", "fraction", "at"}, written by the
-- training process at each phase (a few small UPDATEs per training), shown by the API, `sfq watch`
-- and `sfq submit --wait`.
ALTER TABLE models ADD COLUMN progress jsonb;

-- Who each training worker is (Procrastinate's own table has only an id and a heartbeat): written with
-- the daemon's own heartbeat, for `sfq status` and GET /metrics.
CREATE TABLE sfq_workers (
    worker_id bigint PRIMARY KEY,  -- procrastinate_workers.id of the daemon's training worker
    host text NOT NULL,
    pid integer NOT NULL,
    instance integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);
