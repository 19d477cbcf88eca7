"""make bench-stats' data generator (loadtests/bench_stats.py) on a small set, against the real
database: its rollups are exactly what the click worker makes of the same raw clicks, they
agree with counts taken straight from the raw rows, the popularity is skewed as asked, and a
repeated run adds nothing."""

from __future__ import annotations

import json
from argparse import Namespace
from datetime import UTC, datetime

from app import sql as queries
from loadtests import bench_stats

ARGS = Namespace(links=12, clicks=6000, days=3, zipf=1.0)
ROLLUPS = {
    "click_hourly": "SELECT url_id, hour, clicks, bots FROM click_hourly ORDER BY 1, 2",
    "click_daily": "SELECT url_id, day, clicks, bots, uniques FROM click_daily ORDER BY 1, 2",
    "click_dims": "SELECT url_id, day, dimension, value, clicks FROM click_dims ORDER BY 1, 2, 3, 4",
    "click_spans": "SELECT days, start_day, url_id, clicks, bots, uniques FROM click_spans ORDER BY 1, 2, 3",
}
RAW = "SELECT ts, click_id, url_id, visitor, is_bot, browser, os, device, referrer_domain FROM clicks ORDER BY 1, 2"


def generate(sql) -> list[int]:
    """The generator's SQL as make bench-stats sends it to psql; the links' ids by rank."""
    sql(bench_stats.setup_sql(ARGS.links))
    days = bench_stats.days_of(datetime.now(UTC).date(), ARGS.days)
    sql(bench_stats.generate_script(days, ARGS))
    rows = sql(f"SELECT id FROM urls WHERE short_code LIKE '{bench_stats.CODE_PREFIX}%' ORDER BY id")
    return [r[0] for r in rows]


def snapshot(sql) -> dict[str, list[tuple]]:
    return {name: sql(query) for name, query in ROLLUPS.items()}


def test_generated_rollups_are_the_workers_and_match_the_raw_rows(sql):
    ids = generate(sql)
    assert len(ids) == ARGS.links
    owners = sql("SELECT DISTINCT u.user_id, s.email FROM urls u JOIN users s ON s.id = u.user_id")
    assert [o[1] for o in owners] == [bench_stats.USER_EMAIL]
    generated = snapshot(sql)
    raw = sql(RAW)

    # Counted straight from the raw rows (a second definition, here only to check the first).
    per_day = sql(
        "SELECT url_id, ts::date, count(*), count(*) FILTER (WHERE is_bot), count(DISTINCT visitor)"
        " FROM clicks GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert generated["click_daily"] == per_day
    hours = sql(
        "SELECT url_id, date_trunc('hour', ts), count(*), count(*) FILTER (WHERE is_bot) FROM clicks GROUP BY 1, 2"
    )
    assert sorted(generated["click_hourly"]) == sorted(hours)
    browsers = sql("SELECT url_id, ts::date, 'browser', browser, count(*) FROM clicks GROUP BY 1, 2, 4")
    assert sorted(r for r in generated["click_dims"] if r[2] == "browser") == sorted(browsers)

    # The same raw clicks through the click worker's statement: the same rollups.
    sql("TRUNCATE clicks, click_hourly, click_daily, click_dims, click_spans, click_visitors, events RESTART IDENTITY")
    payload = [
        {
            "click_id": click_id,
            "url_id": url_id,
            "user_id": None,
            "ts": ts.isoformat(),
            "details": {},
            "visitor": visitor,
            "is_bot": is_bot,
            "browser": browser,
            "os": os,
            "device": device,
            "referrer_domain": referrer,
            "client_addr": None,
        }
        for ts, click_id, url_id, visitor, is_bot, browser, os, device, referrer in raw
    ]
    sql(queries.WRITE_CLICKS, (json.dumps(payload),))
    assert snapshot(sql) == generated
    assert sql(RAW) == raw


def test_popularity_is_skewed_and_a_second_run_adds_nothing(sql):
    ids = generate(sql)
    totals = dict(sql("SELECT url_id, sum(clicks) FROM click_daily GROUP BY 1"))
    by_rank = [totals[i] for i in ids]
    # Zipf with s = 1: rank r gets 1/r of rank 1's share (each day's count rounded at random).
    assert abs(sum(by_rank) - ARGS.clicks) < ARGS.clicks * 0.01
    assert by_rank == sorted(by_rank, reverse=True)
    assert 1.8 < by_rank[0] / by_rank[1] < 2.2
    assert 9 < by_rank[0] / by_rank[9] < 11
    bots, clicks = sql("SELECT sum(bots), sum(clicks) FROM click_daily")[0]
    assert 0.07 < bots / clicks < 0.13
    devices = {r[0] for r in sql("SELECT DISTINCT value FROM click_dims WHERE dimension = 'device'")}
    assert devices == {"bot", "desktop", "mobile", "tablet", "other"}

    before = snapshot(sql)
    generate(sql)  # the same clicks again (same ids, same times): none counted twice
    assert snapshot(sql) == before
    # The worker's pruning ran: visitor lists only of yesterday and today are kept.
    assert sql("SELECT count(*) FROM click_visitors WHERE day < (now() AT TIME ZONE 'utc')::date - 1") == [(0,)]
