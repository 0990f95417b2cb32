-- sfq 0032: the fleet's round counts the daemons that beat within the rescue threshold, and every beat
-- reads it back: each daemon's idle workers then poll no more often than the fleet's size times
-- SFQ_POLL_GAP_S (issue 15 part 4; sql/schema/queue.sql, sfq_beat).
ALTER TABLE sfq_fleet_round ADD COLUMN daemons integer NOT NULL DEFAULT 0;
