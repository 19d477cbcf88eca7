-- `python -m app.clickstore backfill` (docs/analytics.md) feeds the clicks that were in `events`
-- before the analytics (0004) to the statistics. The shortener role runs it after every
-- converge; this row says it once ran to the end, and then it does nothing. Never twice: once
-- retention has dropped old raw partitions, old events fed again would count twice in the
-- rollups, which are kept forever.
CREATE TABLE clicks_backfill (
    done         BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (done),
    finished_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    -- Click events fed (those already counted, by the worker since 0004, add nothing again).
    events       BIGINT NOT NULL
);
