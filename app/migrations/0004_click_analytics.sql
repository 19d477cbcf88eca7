-- Per-link analytics (docs/analytics.md). Raw clicks, parsed, in a table partitioned by month
-- (retention drops whole partitions), and rollups the click worker updates in the same
-- statement as the raw insert, so the two never disagree. `events` keeps every click as the
-- API contract shows it; these tables only feed the statistics. Pure DDL: instant on a database
-- that already holds millions of clicks (`python -m app.clickstore backfill` parses those).

CREATE TABLE clicks (
    ts               TIMESTAMP NOT NULL,
    click_id         TEXT NOT NULL,
    url_id           BIGINT NOT NULL,
    -- Keyed hash of address and user agent, the key rotating daily (visitor_keys).
    visitor          TEXT NOT NULL,
    is_bot           BOOLEAN NOT NULL,
    browser          TEXT NOT NULL,
    os               TEXT NOT NULL,
    device           TEXT NOT NULL,
    referrer_domain  TEXT NOT NULL,
    -- Only with SHORTENER_CLICKS_KEEP_ADDRESSES=true; NULL by default.
    client_addr      INET,
    -- The unique key includes the partition key, as PostgreSQL requires; a click's time never
    -- changes between deliveries, so (ts, click_id) identifies it as well as click_id alone.
    PRIMARY KEY (ts, click_id)
) PARTITION BY RANGE (ts);
CREATE INDEX clicks_url_id_ts_idx ON clicks (url_id, ts);

-- Per link and hour: the time series and the totals.
CREATE TABLE click_hourly (
    url_id  BIGINT NOT NULL,
    hour    TIMESTAMP NOT NULL,
    clicks  BIGINT NOT NULL,
    bots    BIGINT NOT NULL,
    PRIMARY KEY (url_id, hour)
);

-- Per link and day: totals for GET /stats/top and unique visitors (a visitor id is only stable
-- for one day, so uniques exist per day and no finer).
CREATE TABLE click_daily (
    url_id   BIGINT NOT NULL,
    day      DATE NOT NULL,
    clicks   BIGINT NOT NULL,
    bots     BIGINT NOT NULL,
    uniques  BIGINT NOT NULL,
    PRIMARY KEY (url_id, day)
);
CREATE INDEX click_daily_day_idx ON click_daily (day, url_id) INCLUDE (clicks);

-- Per link, day and dimension (referrer, browser, os, device): the top tables.
CREATE TABLE click_dims (
    url_id     BIGINT NOT NULL,
    day        DATE NOT NULL,
    dimension  TEXT NOT NULL,
    value      TEXT NOT NULL,
    clicks     BIGINT NOT NULL,
    PRIMARY KEY (url_id, day, dimension, value)
);

-- The visitors seen per link and day, to count each once; pruned after two days.
CREATE TABLE click_visitors (
    url_id   BIGINT NOT NULL,
    day      DATE NOT NULL,
    visitor  TEXT NOT NULL,
    PRIMARY KEY (url_id, day, visitor)
);

-- One random key per UTC day; deleted after two days, which makes old visitor ids unlinkable.
CREATE TABLE visitor_keys (
    day  DATE PRIMARY KEY,
    key  BYTEA NOT NULL
);

-- Partitions are DDL, and the service's role may only read and write rows: these two run as
-- the schema's owner (SECURITY DEFINER), with a fixed search_path so that nobody can slip in
-- objects of their own.
CREATE FUNCTION clicks_partition(month DATE) RETURNS TEXT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first DATE := date_trunc('month', month)::date;
    name TEXT := 'clicks_' || to_char(first, 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        -- Two workers creating the same month: the loser waits on the lock and then, as its
        -- catalog view may still be the old one, finds the table taken.
        PERFORM pg_advisory_xact_lock(hashtext('shortener:' || name));
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF clicks FOR VALUES FROM (%L) TO (%L)',
                           name, first, (first + interval '1 month')::date);
        EXCEPTION WHEN duplicate_table THEN
            NULL;
        END;
    END IF;
    RETURN name;
END
$$;

-- Drops the partitions that end on or before `cutoff`; returns their names.
CREATE FUNCTION clicks_drop_partitions(cutoff DATE) RETURNS SETOF TEXT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part RECORD;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'clicks'::regclass AND c.relname ~ '^clicks_\d{4}_\d{2}$'
          AND (to_date(substr(c.relname, 8), 'YYYY_MM') + interval '1 month')::date <= cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;
