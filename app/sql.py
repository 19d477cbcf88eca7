"""Every SQL statement the service runs, in one place.

Parameters are always passed separately (psycopg2 quotes them); identifiers are never
built from input.
"""

NOW = "(now() AT TIME ZONE 'utc')"

# --- users -------------------------------------------------------------------------------
USER_COLUMNS = "id, username, email, created_at"

LOCK_USER_NAMES = "SELECT pg_advisory_xact_lock(hashtext('users:' || lower(%s)))"

USER_TAKEN = f"""
SELECT {USER_COLUMNS} FROM users
WHERE (username = %(username)s OR lower(email) = lower(%(email)s)) AND id <> %(id)s
LIMIT 1
"""

INSERT_USER = f"""
INSERT INTO users (username, email) VALUES (%(username)s, %(email)s)
RETURNING {USER_COLUMNS}
"""

GET_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s"

USER_EXISTS = "SELECT 1 FROM users WHERE id = %s"

LIST_USERS = f"SELECT {USER_COLUMNS} FROM users ORDER BY id LIMIT %s OFFSET %s"

UPDATE_USER = f"""
UPDATE users SET username = COALESCE(%(username)s, username), email = COALESCE(%(email)s, email)
WHERE id = %(id)s RETURNING {USER_COLUMNS}
"""

DELETE_USER = "DELETE FROM users WHERE id = %s"

# Bulk import: a row with an id takes that id (updated when it exists); a row whose email is
# already known is kept as it is. Either way it counts as processed.
UPSERT_USER_WITH_ID = f"""
INSERT INTO users (id, username, email, created_at)
VALUES (%(id)s, %(username)s, %(email)s, COALESCE(%(created_at)s, {NOW}))
ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, email = EXCLUDED.email
"""

INSERT_USER_IF_NEW_EMAIL = f"""
INSERT INTO users (username, email, created_at)
SELECT %(username)s, %(email)s, COALESCE(%(created_at)s, {NOW})
WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower(%(email)s))
"""

EMAIL_OWNER = "SELECT id FROM users WHERE lower(email) = lower(%s)"

MAX_USER_ID = "SELECT COALESCE(max(id), 0) AS max_id FROM users"

# --- urls --------------------------------------------------------------------------------
URL_COLUMNS = (
    "id, user_id, short_code, original_url, title, is_active, redirect_type, created_at, updated_at,"
    " expires_at, max_clicks"
)

# A new link and its `created` event in ONE statement: atomic in autocommit, one round trip
# through PgBouncer instead of four (BEGIN, two INSERTs, COMMIT); docs/capacity.md, fix 6.
# A taken code inserts neither row and returns none.
INSERT_URL = f"""
WITH url AS (
    INSERT INTO urls (user_id, short_code, original_url, title, redirect_type, expires_at, max_clicks)
    VALUES (%(user_id)s, %(short_code)s, %(original_url)s, %(title)s, %(redirect_type)s,
            %(expires_at)s::timestamp, %(max_clicks)s)
    ON CONFLICT (short_code) DO NOTHING
    RETURNING {URL_COLUMNS}
), created AS (
    INSERT INTO events (url_id, user_id, event_type, details)
    SELECT id, user_id, 'created',
           jsonb_build_object('short_code', short_code, 'original_url', original_url) || %(details)s::jsonb
    FROM url
)
SELECT {URL_COLUMNS} FROM url
"""

GET_URL = f"SELECT {URL_COLUMNS} FROM urls WHERE id = %s AND deleted_at IS NULL"

GET_URL_FOR_UPDATE = f"SELECT {URL_COLUMNS} FROM urls WHERE id = %s AND deleted_at IS NULL FOR UPDATE"

# What a redirect needs, and nothing more.
RESOLVE_CODE = f"""
SELECT id, user_id, original_url, is_active, redirect_type, expires_at, max_clicks,
       expires_at IS NOT NULL AND expires_at <= {NOW} AS expired
FROM urls WHERE short_code = %s AND deleted_at IS NULL
"""

LIST_URLS = f"""
SELECT {URL_COLUMNS} FROM urls
WHERE deleted_at IS NULL
  AND (%(user_id)s::bigint IS NULL OR user_id = %(user_id)s)
  AND (%(owner_id)s::bigint IS NULL OR user_id = %(owner_id)s)
  AND (%(is_active)s::boolean IS NULL OR is_active = %(is_active)s)
ORDER BY id LIMIT %(limit)s OFFSET %(offset)s
"""

UPDATE_URL = f"""
UPDATE urls SET title = %(title)s, is_active = %(is_active)s, original_url = %(original_url)s,
    redirect_type = %(redirect_type)s, expires_at = %(expires_at)s::timestamp, max_clicks = %(max_clicks)s,
    updated_at = GREATEST({NOW}, updated_at + interval '1 second')
WHERE id = %(id)s RETURNING {URL_COLUMNS}
"""

DELETE_URL = f"""
UPDATE urls SET deleted_at = {NOW}, is_active = FALSE, updated_at = {NOW}
WHERE id = %s AND deleted_at IS NULL RETURNING id, user_id, short_code
"""

# --- events ------------------------------------------------------------------------------
EVENT_COLUMNS = 'id, url_id, user_id, event_type, "timestamp", details'

INSERT_EVENT = f"""
INSERT INTO events (url_id, user_id, event_type, details)
VALUES (%(url_id)s, %(user_id)s, %(event_type)s, %(details)s)
RETURNING {EVENT_COLUMNS}
"""

_EVENT_FILTERS = {
    "url_id": "(%(url_id)s::bigint IS NULL OR url_id = %(url_id)s)",
    "user_id": "(%(user_id)s::bigint IS NULL OR user_id = %(user_id)s)",
    "event_type": "(%(event_type)s::text IS NULL OR event_type = %(event_type)s)",
}


def _list_events(leading: str | None) -> str:
    """A page of events, one statement per leading filter (app/api/events.py picks it).

    With a filter, "ORDER BY id" let the planner walk the primary key and drop what does not
    match, guessing matches are spread evenly; when they are all recent (a link that just went
    viral) that read the whole table for one page. The leading filter is therefore written as
    a range (an equality would make the planner drop its column from the ORDER BY again) and
    the order is (column, id), the same order under the filter, which only the (column, id)
    index of migration 0003 gives: one page reads offset + limit index entries.

    The event type is the exception (migration 0008): its index leaves out the clicks, nearly
    every row, and only an equality lets the planner prove a query is not about clicks and use
    it, ordered by id under the equality. Clicks are read along the primary key, where nearly
    every row is one.
    """
    by_type = leading == "event_type"
    lead = f"{leading} = %({leading})s" if by_type else f"{leading} BETWEEN %({leading})s AND %({leading})s"
    where = [lead if column == leading else condition for column, condition in _EVENT_FILTERS.items()]
    # A user's key sees the events of its links and the events about itself.
    where.append(
        "(%(owner_id)s::bigint IS NULL OR user_id = %(owner_id)s"
        " OR url_id IN (SELECT id FROM urls WHERE user_id = %(owner_id)s))"
    )
    order = f"{leading}, id" if leading and not by_type else "id"
    return f"""
SELECT {EVENT_COLUMNS} FROM events
WHERE {" AND ".join(where)}
ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s
"""


LIST_EVENTS = _list_events(None)
LIST_EVENTS_BY = {column: _list_events(column) for column in _EVENT_FILTERS}

# Clicks arrive in batches as one JSON array. A click whose link or user vanished meanwhile
# keeps its row with a null reference rather than failing the whole batch. The click id makes
# a repeated delivery a no-op.
INSERT_CLICKS = """
INSERT INTO events (url_id, user_id, event_type, "timestamp", details, click_id)
SELECT (SELECT u.id FROM urls u WHERE u.id = c.url_id),
       (SELECT s.id FROM users s WHERE s.id = c.user_id),
       'click', c.ts, c.details, c.click_id
FROM jsonb_to_recordset(%s::jsonb)
     AS c(click_id text, url_id bigint, user_id bigint, ts timestamp, details jsonb)
-- A total order: the worker and GET /events write overlapping batches at once, and each row
-- waits on the unique index for any other writer of the same click_id. Same order in every
-- writer, no deadlock (by ts alone, rows of one second came in any order and deadlocked).
ORDER BY c.ts, c.click_id
ON CONFLICT (click_id) DO NOTHING
"""

# A link's counted clicks: what max_clicks is checked against while Redis is out, and where
# the Redis counter starts when it was lost.
COUNT_CLICKS = "SELECT count(*) AS n FROM events WHERE url_id = %s AND event_type = 'click'"

# --- click analytics (docs/analytics.md) -----------------------------------------------------
# The rollups of the raw clicks one statement inserted: CTEs that read `raw`, an
# `INSERT INTO clicks ... ON CONFLICT DO NOTHING RETURNING {RAW_RETURNING}` before them. The
# click worker (WRITE_CLICKS) and the analytics benchmark's generator (loadtests/bench_stats.py)
# both use this one text, so generated statistics are counted exactly as real ones.
RAW_RETURNING = "url_id, ts, visitor, is_bot, browser, os, device, referrer_domain"
# click_spans (migration 0007): per link, the sums of aligned runs of SPAN_DAYS days, so that
# GET /stats/top reads a few rows per link whatever the range (app/spans.py cuts a range into
# whole runs and single days). A run of n days starts on a day whose number since SPAN_EPOCH
# is a multiple of n; each size divides the next, so the runs nest. mod(), not the % operator:
# this text runs both through psycopg2 (where % marks a parameter) and through psql.
SPAN_DAYS = (4, 16, 64)
SPAN_EPOCH = "1970-01-01"
# The span rows of the per-day rows of {daily} (url_id, day, clicks, bots, uniques).
_SPANS_OF = f"""SELECT z.days, x.day - mod(mod(x.day - DATE '{SPAN_EPOCH}', z.days) + z.days, z.days), x.url_id,
           sum(x.clicks), sum(x.bots), sum(x.uniques)
    FROM {{daily}} x CROSS JOIN (VALUES {", ".join(f"({n})" for n in SPAN_DAYS)}) AS z(days) GROUP BY 1, 2, 3"""
CLICK_ROLLUPS = f"""
hourly AS (
    INSERT INTO click_hourly AS h (url_id, hour, clicks, bots)
    SELECT url_id, date_trunc('hour', ts), count(*), count(*) FILTER (WHERE is_bot) FROM raw
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (url_id, hour) DO UPDATE SET clicks = h.clicks + EXCLUDED.clicks, bots = h.bots + EXCLUDED.bots
), seen AS (
    INSERT INTO click_visitors (url_id, day, visitor)
    SELECT DISTINCT url_id, ts::date, visitor FROM raw ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING RETURNING url_id, day
), per_day AS (
    SELECT r.url_id, r.day, r.clicks, r.bots, COALESCE(s.n, 0) AS uniques
    FROM (SELECT url_id, ts::date AS day, count(*) AS clicks, count(*) FILTER (WHERE is_bot) AS bots
          FROM raw GROUP BY 1, 2) r
    LEFT JOIN (SELECT url_id, day, count(*) AS n FROM seen GROUP BY 1, 2) s USING (url_id, day)
), daily AS (
    INSERT INTO click_daily AS d (url_id, day, clicks, bots, uniques)
    SELECT url_id, day, clicks, bots, uniques FROM per_day ORDER BY 1, 2
    ON CONFLICT (url_id, day) DO UPDATE
    SET clicks = d.clicks + EXCLUDED.clicks, bots = d.bots + EXCLUDED.bots, uniques = d.uniques + EXCLUDED.uniques
), spans AS (
    INSERT INTO click_spans AS p (days, start_day, url_id, clicks, bots, uniques)
    {_SPANS_OF.format(daily="per_day")} ORDER BY 1, 2, 3
    ON CONFLICT (days, start_day, url_id) DO UPDATE
    SET clicks = p.clicks + EXCLUDED.clicks, bots = p.bots + EXCLUDED.bots, uniques = p.uniques + EXCLUDED.uniques
), dims AS (
    INSERT INTO click_dims AS m (url_id, day, dimension, value, clicks)
    SELECT url_id, ts::date, x.dimension, x.value, count(*)
    FROM raw CROSS JOIN LATERAL (VALUES ('referrer', referrer_domain), ('browser', browser), ('os', os),
                                        ('device', device)) AS x(dimension, value)
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (url_id, day, dimension, value) DO UPDATE SET clicks = m.clicks + EXCLUDED.clicks
)
"""

# One batch of clicks in ONE statement, so one transaction: the events the contract lists, the
# parsed raw clicks and every rollup. The rollups are fed only by the raw rows this statement
# inserted (RETURNING), so a click delivered twice is counted once and the rollups always agree
# with the raw rows. Each upsert goes in key order: concurrent writers never deadlock.
WRITE_CLICKS = f"""
WITH c AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS c(
        click_id text, url_id bigint, user_id bigint, ts timestamp, details jsonb, visitor text,
        is_bot boolean, browser text, os text, device text, referrer_domain text, client_addr inet)
), ev AS (
    INSERT INTO events (url_id, user_id, event_type, "timestamp", details, click_id)
    SELECT (SELECT u.id FROM urls u WHERE u.id = c.url_id), (SELECT s.id FROM users s WHERE s.id = c.user_id),
           'click', c.ts, c.details, c.click_id
    FROM c ORDER BY c.ts, c.click_id
    ON CONFLICT (click_id) DO NOTHING RETURNING 1
), raw AS (
    INSERT INTO clicks (ts, click_id, url_id, visitor, is_bot, browser, os, device, referrer_domain, client_addr)
    SELECT c.ts, c.click_id, c.url_id, c.visitor, c.is_bot, c.browser, c.os, c.device, c.referrer_domain,
           c.client_addr
    FROM c WHERE EXISTS (SELECT 1 FROM urls u WHERE u.id = c.url_id) ORDER BY c.ts, c.click_id
    ON CONFLICT (ts, click_id) DO NOTHING
    RETURNING {RAW_RETURNING}
), {CLICK_ROLLUPS}
SELECT (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM raw) AS clicks
"""

CLICKS_PARTITION = "SELECT clicks_partition(%s) AS name"
CLICKS_DROP_PARTITIONS = "SELECT clicks_drop_partitions(%s) AS name"
# The visitor keys and seen visitors of days before yesterday: gone, so old ids stay unlinkable.
PRUNE_VISITORS = f"""
WITH k AS (DELETE FROM visitor_keys WHERE day < {NOW}::date - 1)
DELETE FROM click_visitors WHERE day < {NOW}::date - 1
"""
INSERT_VISITOR_KEY = "INSERT INTO visitor_keys (day, key) VALUES (%s, %s) ON CONFLICT DO NOTHING"
VISITOR_KEY = "SELECT key FROM visitor_keys WHERE day = %s"

# click_spans rebuilt from click_daily, once (migration 0007 made it empty): under a SHARE lock,
# which waits for the writers in flight and holds off new ones, so that nothing an older
# release's click worker wrote (it knows no spans) is missed, and nothing counted twice.
SPANS_FILLED = "SELECT filled_at, spans FROM click_spans_filled"
FILL_SPANS = (
    "SET LOCAL statement_timeout = 0",  # the service's is seconds; this runs once, as long as it takes
    "LOCK TABLE click_daily IN SHARE MODE",
    "DELETE FROM click_spans",
    "INSERT INTO click_spans (days, start_day, url_id, clicks, bots, uniques) " + _SPANS_OF.format(daily="click_daily"),
    "INSERT INTO click_spans_filled (spans) SELECT count(*) FROM click_spans RETURNING spans",
)

# Whether the backfill once ran to the end (migration 0006), and the record that it did.
BACKFILL_DONE = "SELECT finished_at, events FROM clicks_backfill"
BACKFILL_FINISHED = "INSERT INTO clicks_backfill (events) VALUES (%s) ON CONFLICT DO NOTHING"
# Clicks already in `events` (a database upgraded from before the analytics), oldest first, by
# keyset on id up to the last event when it started (what the worker adds meanwhile is
# counted already): python -m app.clickstore backfill feeds them to WRITE_CLICKS.
LAST_EVENT_ID = "SELECT COALESCE(max(id), 0) AS id FROM events"
CLICK_EVENTS_AFTER = """
SELECT id, click_id, url_id, user_id, "timestamp" AS ts, details FROM events
WHERE event_type = 'click' AND click_id IS NOT NULL AND url_id IS NOT NULL AND id > %s AND id <= %s
ORDER BY id LIMIT %s
"""

# One page of a link's raw clicks after (ts, click_id), for the CSV export.
EXPORT_CLICKS = """
SELECT ts, click_id, is_bot, browser, os, device, referrer_domain, visitor, host(client_addr) AS client_addr
FROM clicks
WHERE url_id = %(url_id)s
  AND (%(ts)s::timestamp IS NULL OR (ts, click_id) > (%(ts)s::timestamp, %(click_id)s))
ORDER BY ts, click_id LIMIT %(limit)s
"""

# --- seed loading ------------------------------------------------------------------------
SEED_USER = """
INSERT INTO users (id, username, email, created_at) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

SEED_URL = """
INSERT INTO urls (id, user_id, short_code, original_url, title, is_active, created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

SEED_EVENT = """
INSERT INTO events (id, url_id, user_id, event_type, "timestamp", details)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

# Moves each id sequence past the largest id, so that the next insert does not collide.
# Only ids below 2^53 count: a row that got past the import's guard (an id loaded by hand
# near 2^63) must not move a sequence next to its end, where every later insert fails.
RESET_SEQUENCES = """
SELECT setval(pg_get_serial_sequence('users', 'id'),
              COALESCE((SELECT max(id) FROM users WHERE id < 9007199254740992), 0) + 1, false),
       setval(pg_get_serial_sequence('urls', 'id'),
              COALESCE((SELECT max(id) FROM urls WHERE id < 9007199254740992), 0) + 1, false),
       setval(pg_get_serial_sequence('events', 'id'),
              COALESCE((SELECT max(id) FROM events WHERE id < 9007199254740992), 0) + 1, false)
"""

# --- migrations --------------------------------------------------------------------------
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('shortener:migrations'))"

CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version TEXT PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT {NOW}
)
"""

APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"

RECORD_MIGRATION = "INSERT INTO schema_migrations (version) VALUES (%s)"

# The role's own defaults apply to every server connection PgBouncer opens for it, which is
# the only way to bound statements without session state.
SET_ROLE_TIMEOUTS = """
DO $$
BEGIN
  EXECUTE format('ALTER ROLE %%I SET statement_timeout = %%L', current_user, %s);
  EXECUTE format('ALTER ROLE %%I SET idle_in_transaction_session_timeout = %%L', current_user, %s);
END
$$
"""

# --- api keys ----------------------------------------------------------------------------
KEY_COLUMNS = "id, user_id, is_admin, name, prefix, created_at, last_used_at, revoked_at"

INSERT_KEY = f"""
INSERT INTO api_keys (user_id, is_admin, name, prefix, key_hash)
VALUES (%(user_id)s, %(is_admin)s, %(name)s, %(prefix)s, %(key_hash)s)
RETURNING {KEY_COLUMNS}
"""

# Any key with this hash, revoked or not: the authentication lookup and ensure-admin.
KEY_BY_HASH = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = %s"

GET_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s"

KEYS_BY_PREFIX = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = %s ORDER BY id"

LIST_KEYS = f"""
SELECT {KEY_COLUMNS} FROM api_keys
WHERE (%(user_id)s::bigint IS NULL OR user_id = %(user_id)s)
ORDER BY id LIMIT %(limit)s OFFSET %(offset)s
"""

# Idempotent: revoking twice keeps the first time.
REVOKE_KEY = f"""
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, {NOW})
WHERE id = %s RETURNING {KEY_COLUMNS}
"""

# The service calls this at most once a minute per key and process (app/access.py); the
# condition keeps several processes from rewriting the same row within the minute.
TOUCH_KEY = f"""
UPDATE api_keys SET last_used_at = {NOW}
WHERE id = %s AND (last_used_at IS NULL OR last_used_at < {NOW} - interval '1 minute')
"""
