-- sfq 0027: a worker daemon's beat is one statement, sfq_beat (sql/schema/queue.sql), and the fleet's round
-- (rescue, due retrains, forgetting old workers) runs once per period for the whole fleet, not on every
-- daemon's every beat (issue 15 part 4): sfq_fleet_round records when it last ran.
CREATE TABLE sfq_fleet_round (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    ran_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO sfq_fleet_round DEFAULT VALUES;
