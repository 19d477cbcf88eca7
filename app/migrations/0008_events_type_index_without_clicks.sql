-- Clicks are nearly every row of `events`, and each one cost an entry in (event_type, id) that
-- no query needs: `GET /events?event_type=click` reads the primary key in order and finds a
-- click on almost every row, while the other types (created, updated, deleted, anything
-- posted) are few and need the index to find their page without walking every click. The
-- index therefore leaves the clicks out, and the click worker maintains one index fewer per
-- click (docs/capacity.md, "Ingestion"). sql.LIST_EVENTS_BY["event_type"] writes the filter as
-- an equality, which is what lets the planner prove the index's condition.
-- Built inside the migration's transaction, like 0003: writes to events wait while it builds
-- (it reads the whole table and keeps the few non-click rows: seconds for millions of rows).
CREATE INDEX events_event_type_id_not_click_idx ON events (event_type, id) WHERE event_type <> 'click';
DROP INDEX events_event_type_id_idx;
