-- GET /stats/top over a long range (issue 12): per link, the sums of aligned runs of days
-- (sql.SPAN_DAYS: 4, 16 and 64 days), so that a 90-day range reads about 9 rows per link
-- rather than 90 (app/spans.py). The click worker updates them in the same statement as the
-- other rollups (sql.CLICK_ROLLUPS). Made empty here: `python -m app.clickstore backfill`,
-- which the shortener role runs after the restarts, fills it once from click_daily under a
-- lock (sql.FILL_SPANS), so the clicks an older worker writes until its restart are not missed.
CREATE TABLE click_spans (
    days       INTEGER NOT NULL,
    start_day  DATE NOT NULL,
    url_id     BIGINT NOT NULL,
    clicks     BIGINT NOT NULL,
    bots       BIGINT NOT NULL,
    uniques    BIGINT NOT NULL,
    -- Run first: /stats/top reads every link's row of a few runs.
    PRIMARY KEY (days, start_day, url_id)
);

-- The fill above ran (once).
CREATE TABLE click_spans_filled (
    done       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (done),
    filled_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    spans      BIGINT NOT NULL
);

-- /stats/top's single days: every column it sums in the index, read without the table.
DROP INDEX click_daily_day_idx;
CREATE INDEX click_daily_day_idx ON click_daily (day, url_id) INCLUDE (clicks, bots, uniques);
