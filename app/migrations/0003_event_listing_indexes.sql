-- GET /events with a filter reads "WHERE <filter> ORDER BY id LIMIT n OFFSET m". With an index
-- on (filter column, id) that is a bounded index range scan, in order, of offset + limit
-- entries; with the single-column indexes PostgreSQL either sorted every matching row (all
-- the clicks of a busy link) or walked the primary key past every row that did not match.
-- The composite indexes serve the foreign-key lookups as well, so the old ones go: one index
-- per column to maintain on the click path, as before.
-- Built inside the migration's transaction: writes to events wait while they build (seconds
-- for millions of rows; see docs/failure-modes.md, "Safe input").
CREATE INDEX events_url_id_id_idx ON events (url_id, id);
CREATE INDEX events_user_id_id_idx ON events (user_id, id);
CREATE INDEX events_event_type_id_idx ON events (event_type, id);
DROP INDEX events_url_id_idx;
DROP INDEX events_user_id_idx;
DROP INDEX events_event_type_idx;
