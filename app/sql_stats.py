"""The statistics API's reads (app/api/stats.py), kept apart from app/sql.py for its size.

The series are built by PostgreSQL as JSON text, every bucket of the range with the empty ones:
at 2,160 hourly buckets (90 days) building them in Python cost more than the queries, and
json_agg(json_build_object(...)) in PostgreSQL 2.4 times what concatenating the text costs
(docs/analytics.md, "Statistics at scale").
"""


def _series_json(fields: dict[str, str]) -> str:
    """A JSON array of one object per bucket b.t, in time order, as text: "time" as
    app.schemas.timestamp writes it (UTC, no offset, whole seconds), then ``fields`` (name: an
    integer SQL expression; integers need no escaping, so concat() writes valid JSON)."""
    parts = ["""'{"time": "', to_char(b.t, 'YYYY-MM-DD"T"HH24:MI:SS'), '"'"""]
    parts += [f"""', "{name}": ', {value}""" for name, value in fields.items()]
    return f"""COALESCE('[' || string_agg(concat({", ".join(parts)}, '}}'), ', ' ORDER BY b.t) || ']', '[]')"""


def _counts(alias: str) -> dict[str, str]:
    """A bucket's counts from the rollup row ``alias`` (NULL for an empty bucket: zeros)."""
    return {
        "clicks": f"COALESCE({alias}.clicks, 0)",
        "humans": f"COALESCE({alias}.clicks - {alias}.bots, 0)",
        "bots": f"COALESCE({alias}.bots, 0)",
    }


_HOUR = _counts("h")
# Unique visitors are counted per day only (click_daily).
_DAY = {**_counts("d"), "unique_visitors": "COALESCE(d.uniques, 0)"}

# Unique visitors exist per day: those of the whole days the range touches (up to day_end).
# OFFSET 0 keeps the link's hours one range scan, hashed and joined to the buckets: without it
# the planner (which takes generate_series for 1,000 rows) probes the index once per bucket,
# 2,160 probes over 90 days, 1.7 times as long in all (docs/analytics.md).
STATS_SERIES_HOUR = f"""
SELECT {_series_json(_HOUR)} AS series,
       COALESCE(sum(h.clicks), 0)::bigint AS clicks, COALESCE(sum(h.bots), 0)::bigint AS bots,
       (SELECT COALESCE(sum(uniques), 0) FROM click_daily
        WHERE url_id = %(url_id)s AND day >= %(start)s::date AND day < %(day_end)s::date)::bigint AS uniques
FROM generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 hour', interval '1 hour') AS b(t)
LEFT JOIN (SELECT hour, clicks, bots FROM click_hourly
           WHERE url_id = %(url_id)s AND hour >= %(start)s AND hour < %(end)s OFFSET 0) h ON h.hour = b.t
"""

STATS_SERIES_DAY = f"""
SELECT {_series_json(_DAY)} AS series,
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
# a few rows per link instead of one per day, summed per link and sorted; then the links looked
# up in that order, one by one (deleted ones and, for a user, other owners' left out), until
# the limit: an admin's top 10 probes `urls` about 10 times, not once per link with clicks
# (10,000 probes, most of the query's time at the benchmark's size). The LATERAL lookup keeps
# the join a nested loop over the sorted sums, which keeps their order, so the outer ORDER BY
# (the same key) adds no sort and the LIMIT stops the loop.
# Run first in STATS_TOP's transaction. The planner cannot know how many links the union of
# days and runs holds (it guesses 200 where the benchmark has 10,000), so it splits the sums
# among parallel workers; gathering their partial sums cost more than it saved (docs/analytics.md).
STATS_TOP_SETTINGS = "SET LOCAL max_parallel_workers_per_gather = 0"
STATS_TOP = """
SELECT t.url_id, u.short_code, t.clicks, t.bots, t.uniques
FROM (
    SELECT url_id, sum(clicks) AS clicks, sum(bots) AS bots, sum(uniques) AS uniques
    FROM (
        SELECT url_id, clicks, bots, uniques FROM click_daily WHERE day = ANY(%(days)s::date[])
        UNION ALL
        SELECT s.url_id, s.clicks, s.bots, s.uniques
        FROM unnest(%(span_days)s::int[], %(span_starts)s::date[]) AS b(days, start_day)
        JOIN click_spans s ON s.days = b.days AND s.start_day = b.start_day
    ) parts
    GROUP BY 1 ORDER BY 2 DESC, 1
) t
CROSS JOIN LATERAL (
    SELECT u.short_code FROM urls u
    WHERE u.id = t.url_id AND u.deleted_at IS NULL AND (%(owner_id)s::bigint IS NULL OR u.user_id = %(owner_id)s)
) u
ORDER BY t.clicks DESC, t.url_id LIMIT %(limit)s
"""
