"""The statistics queries rewritten for speed (docs/analytics.md, "Statistics at scale") answer
what the plain ones did, on make bench-stats' generated clicks (many links, Zipf popularity,
every day of the last weeks) over random ranges: /stats/top against sums taken straight from
click_daily (with a deleted link and a second owner), the series against json_agg's."""

from __future__ import annotations

import json
import random
from argparse import Namespace
from datetime import UTC, datetime, timedelta

from app import spans, sql_stats
from loadtests import bench_stats

ARGS = Namespace(links=40, clicks=12000, days=40, zipf=1.0)

# The series as the first version built them (json_agg of json_build_object): the reference.
_TIME = """to_char(b.t, 'YYYY-MM-DD"T"HH24:MI:SS')"""
PLAIN_HOUR = f"""
SELECT json_agg(json_build_object('time', {_TIME}, 'clicks', COALESCE(h.clicks, 0),
                                  'humans', COALESCE(h.clicks - h.bots, 0), 'bots', COALESCE(h.bots, 0))
                ORDER BY b.t)::text
FROM generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 hour', interval '1 hour') AS b(t)
LEFT JOIN click_hourly h ON h.url_id = %(url_id)s AND h.hour = b.t
"""
PLAIN_DAY = f"""
SELECT json_agg(json_build_object('time', {_TIME}, 'clicks', COALESCE(d.clicks, 0),
                                  'humans', COALESCE(d.clicks - d.bots, 0), 'bots', COALESCE(d.bots, 0),
                                  'unique_visitors', COALESCE(d.uniques, 0))
                ORDER BY b.t)::text
FROM generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 day', interval '1 day') AS b(t)
LEFT JOIN click_daily d ON d.url_id = %(url_id)s AND d.day = b.t::date
"""
DAILY_SUMS = """
SELECT d.url_id, u.short_code, sum(d.clicks), sum(d.bots), sum(d.uniques)
FROM click_daily d JOIN urls u ON u.id = d.url_id AND u.deleted_at IS NULL
WHERE d.day >= %(start)s AND d.day < %(end)s AND (%(owner_id)s::bigint IS NULL OR u.user_id = %(owner_id)s)
GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT %(limit)s
"""


def _generated(sql) -> tuple[list[int], int]:
    """The generated links by rank, one of them deleted and every third moved to a second owner."""
    sql(bench_stats.setup_sql(ARGS.links))
    today = datetime.now(UTC).date()
    sql(bench_stats.generate_script(bench_stats.days_of(today, ARGS.days), ARGS))
    ids = [r[0] for r in sql(f"SELECT id FROM urls WHERE short_code LIKE '{bench_stats.CODE_PREFIX}%' ORDER BY id")]
    other = sql("INSERT INTO users (username, email) VALUES ('other', 'other@example.com') RETURNING id")[0][0]
    sql("UPDATE urls SET user_id = %s WHERE id = ANY(%s)", (other, ids[2::3]))
    sql("UPDATE urls SET deleted_at = now() WHERE id = %s", (ids[1],))
    return ids, other


def test_top_equals_the_daily_sums_on_generated_clicks(sql):
    ids, other = _generated(sql)
    owner = sql("SELECT user_id FROM urls WHERE id = %s", (ids[0],))[0][0]
    rng = random.Random(6)
    today = datetime.now(UTC).date()
    for i in range(30):
        start = today - timedelta(days=rng.randrange(0, ARGS.days + 5))
        end = start + timedelta(days=rng.randrange(1, 50))
        days, runs = spans.cover(start, end)
        params = {"start": start, "end": end, "owner_id": [None, owner, other][i % 3], "limit": rng.choice([1, 10, 50])}
        params |= {"days": days, "span_days": [n for n, _ in runs], "span_starts": [first for _, first in runs]}
        assert sql(sql_stats.STATS_TOP, params) == sql(DAILY_SUMS, params), params


def test_the_series_equal_json_aggs_on_generated_clicks(sql):
    ids, _ = _generated(sql)
    rng = random.Random(7)
    today = datetime.now(UTC).date()
    counted = 0
    for _ in range(10):
        url_id = ids[min(rng.randrange(0, 5), len(ids) - 1)]
        start = datetime.combine(today - timedelta(days=rng.randrange(0, ARGS.days + 5)), datetime.min.time())
        end = start + timedelta(days=rng.randrange(1, 50))
        params = {"url_id": url_id, "start": start, "end": end, "day_end": end}
        for fast, plain in ((sql_stats.STATS_SERIES_DAY, PLAIN_DAY), (sql_stats.STATS_SERIES_HOUR, PLAIN_HOUR)):
            series = sql(fast, params)[0][0]
            assert json.loads(series) == json.loads(sql(plain, params)[0][0]), params
            counted += sum(b["clicks"] for b in json.loads(series))
    assert counted > 1000  # the ranges held clicks, not only empty buckets


def test_the_spans_primary_key_holds_the_sums(sql):
    # Migration 0009: /stats/top reads the runs' sums from the index alone (an index-only scan).
    definition = sql("SELECT pg_get_indexdef('click_spans_pkey'::regclass)")[0][0]
    assert definition.endswith("(days, start_day, url_id) INCLUDE (clicks, bots, uniques)"), definition
