"""The statistics API's reads (app/api/stats.py), kept apart from app/sql.py for its size.

The series are built by PostgreSQL as JSON text, every bucket of the range with the empty ones:
at 2,160 hourly buckets (90 days) building them in Python cost more than the queries
(docs/analytics.md, "Statistics at scale").
"""

# "time" as app.schemas.timestamp writes it (UTC, no offset, whole seconds).
_TIME = """to_char(b.t, 'YYYY-MM-DD"T"HH24:MI:SS')"""

# Unique visitors exist per day: those of the whole days the range touches (up to day_end).
STATS_SERIES_HOUR = f"""
SELECT json_agg(json_build_object('time', {_TIME}, 'clicks', COALESCE(h.clicks, 0),
                                  'humans', COALESCE(h.clicks - h.bots, 0), 'bots', COALESCE(h.bots, 0))
                ORDER BY b.t)::text AS series,
       COALESCE(sum(h.clicks), 0)::bigint AS clicks, COALESCE(sum(h.bots), 0)::bigint AS bots,
       (SELECT COALESCE(sum(uniques), 0) FROM click_daily
        WHERE url_id = %(url_id)s AND day >= %(start)s::date AND day < %(day_end)s::date)::bigint AS uniques
FROM generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 hour', interval '1 hour') AS b(t)
LEFT JOIN (SELECT hour, clicks, bots FROM click_hourly
           WHERE url_id = %(url_id)s AND hour >= %(start)s AND hour < %(end)s) h ON h.hour = b.t
"""

STATS_SERIES_DAY = f"""
SELECT json_agg(json_build_object('time', {_TIME}, 'clicks', COALESCE(d.clicks, 0),
                                  'humans', COALESCE(d.clicks - d.bots, 0), 'bots', COALESCE(d.bots, 0),
                                  'unique_visitors', COALESCE(d.uniques, 0))
                ORDER BY b.t)::text AS series,
       COALESCE(sum(d.clicks), 0)::bigint AS clicks, COALESCE(sum(d.bots), 0)::bigint AS bots,
       COALESCE(sum(d.uniques), 0)::bigint AS uniques
FROM generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 day', interval '1 day') AS b(t)
LEFT JOIN (SELECT day, clicks, bots, uniques FROM click_daily
           WHERE url_id = %(url_id)s AND day >= %(start)s::date AND day < %(end)s::date) d ON d.day = b.t::date
"""

STATS_DIMENSIONS = """
SELECT dimension, value, sum(clicks) AS clicks FROM click_dims
WHERE url_id = %(url_id)s AND day >= %(start)s::date AND day < %(day_end)s::date
GROUP BY 1, 2 ORDER BY 1, 3 DESC, value COLLATE "C"
"""

# The range as single days (click_daily) and whole aligned runs (click_spans), app/spans.py:
# a few rows per link instead of one per day. Summed per link first, then joined to the links
# (deleted ones and, for a user, other owners' left out).
STATS_TOP = """
WITH parts AS (
    SELECT url_id, clicks, bots, uniques FROM click_daily WHERE day = ANY(%(days)s::date[])
    UNION ALL
    SELECT s.url_id, s.clicks, s.bots, s.uniques
    FROM unnest(%(span_days)s::int[], %(span_starts)s::date[]) AS b(days, start_day)
    JOIN click_spans s ON s.days = b.days AND s.start_day = b.start_day
), totals AS (
    SELECT url_id, sum(clicks) AS clicks, sum(bots) AS bots, sum(uniques) AS uniques FROM parts GROUP BY 1
)
SELECT t.url_id, u.short_code, t.clicks, t.bots, t.uniques FROM totals t JOIN urls u ON u.id = t.url_id
WHERE u.deleted_at IS NULL AND (%(owner_id)s::bigint IS NULL OR u.user_id = %(owner_id)s)
ORDER BY t.clicks DESC, t.url_id LIMIT %(limit)s
"""
