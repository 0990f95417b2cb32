-- sfq 0034: a request's bar revisions are read by sfq_canonical_request in the query that pins its
-- data_end (sql/schema/requests.sql): one query a request, not two and a function call (about 5 us of a
-- request, issue 15 part 5). The function that read them goes.
DROP FUNCTION IF EXISTS sfq_bar_revisions(text[], text);
