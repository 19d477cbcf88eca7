"""GET /stats/top over long ranges: single days plus aligned runs of days (app/spans.py,
click_spans), against hand-computed totals and against sums taken straight from click_daily."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest

from app import clickstore, spans
from app import sql as queries
from tests import test_stats_api
from tests.test_analytics import database_before

EPOCH = date.fromisoformat(queries.SPAN_EPOCH)
# The statistics API tests' fixture (an admin, two users, links a, b, c with known clicks).
keyed = test_stats_api.keyed
_click = test_stats_api._click


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-08-03", "2026-11-28"),
        ("2026-09-01", "2026-11-30"),
        ("1969-12-25", "1970-01-09"),
        ("2026-11-27", "2026-11-28"),
    ],
)
def test_a_range_is_cut_into_aligned_runs_and_days_each_day_once(start, end):
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    days, runs = spans.cover(first, last)
    covered = list(days)
    for n, day in runs:
        assert n in queries.SPAN_DAYS and (day - EPOCH).days % n == 0
        covered += [day + timedelta(days=i) for i in range(n)]
    assert sorted(covered) == [first + timedelta(days=i) for i in range((last - first).days)]


def test_the_cut_of_a_known_range():
    # 2026-08-03 is day 20,668 since 1970-01-01: a multiple of 4, and 08-07 of 64.
    days, runs = spans.cover(date(2026, 8, 3), date(2026, 11, 28))
    assert days == [date(2026, 11, 27)]
    assert runs == [
        (4, date(2026, 8, 3)),
        (64, date(2026, 8, 7)),
        (16, date(2026, 10, 10)),
        (16, date(2026, 10, 26)),
        (16, date(2026, 11, 11)),
    ]
    # The benchmark's 90 days: 12 rows per link instead of 90.
    days, runs = spans.cover(date(2026, 9, 1), date(2026, 11, 30))
    assert len(days) + len(runs) == 12


@pytest.fixture
def spread(keyed):
    """Clicks on both sides of each edge of 2026-08-03 .. 2026-11-28 and inside its runs."""
    db = keyed["app"].extensions["shortener"].db
    links = keyed["links"]
    plan = {
        "a": [("2026-08-02", 2), ("2026-08-03", 3), ("2026-09-20", 4), ("2026-11-27", 1), ("2026-11-28", 5)],
        "b": [("2026-08-06", 6), ("2026-10-12", 1), ("2026-11-28", 7)],
        "c": [("2026-08-01", 10), ("2026-11-20", 2)],
    }
    for name, clicks in plan.items():
        for day, n in clicks:
            clickstore.write(db, _click(links[name], f"{day}T23:59:59", n), False)
    return keyed


def _top(client, query: str) -> list[tuple[str, int, int, int]]:
    response = client.get(f"/stats/top?{query}")
    assert response.status_code == 200, response.get_json()
    return [(x["short_code"], x["clicks"], x["bots"], x["unique_visitors"]) for x in response.get_json()["links"]]


def test_top_over_a_long_range_counts_each_day_once(spread):
    a, b, c = (spread["links"][k]["short_code"] for k in "abc")
    # With the keyed fixture's clicks (a: 5 on 11-20; b: 3 on 11-21; c: 1 on 11-22, 9 on 10-01):
    # a: 3 + 4 + 1 + 5 (08-02 and 11-28 are outside); b: 6 + 1 + 3; c: 2 + 1 + 9. curl is a bot,
    # and every click of a day comes from its own address: a visitor of its own.
    assert _top(spread["admin"], "from=2026-08-03&to=2026-11-28") == [(a, 13, 13, 13), (c, 12, 12, 12), (b, 10, 10, 10)]
    assert _top(spread["one"], "from=2026-08-03&to=2026-11-28") == [(a, 13, 13, 13), (c, 12, 12, 12)]
    assert _top(spread["two"], "from=2026-08-03&to=2026-11-28&limit=1") == [(b, 10, 10, 10)]
    # One day more on each side: a + 2 + 5, b + 7, c unchanged (its 08-01 is still outside).
    assert _top(spread["admin"], "from=2026-08-02&to=2026-11-29") == [(a, 20, 20, 20), (b, 17, 17, 17), (c, 12, 12, 12)]


def test_top_equals_the_daily_sums_over_random_ranges(spread, sql):
    rng = random.Random(12)
    for _ in range(25):
        first = date(2026, 7, 20) + timedelta(days=rng.randrange(0, 120))
        last = first + timedelta(days=rng.randrange(1, 140))
        expected = sql(
            "SELECT u.short_code, sum(d.clicks)::int, sum(d.bots)::int, sum(d.uniques)::int"
            " FROM click_daily d JOIN urls u ON u.id = d.url_id AND u.deleted_at IS NULL"
            " WHERE d.day >= %s AND d.day < %s GROUP BY 1 ORDER BY 2 DESC, min(u.id)",
            (first, last),
        )
        assert _top(spread["admin"], f"from={first}&to={last}") == expected, (first, last)


def test_spans_hold_the_sums_of_their_days(spread, sql):
    # The worker wrote click_spans in the same statement as click_daily: every run's row is the
    # sum of its days' rows.
    runs = sql("SELECT days, start_day, url_id, clicks, bots, uniques FROM click_spans ORDER BY 1, 2, 3")
    for n, first, url_id, *sums in runs:
        assert sql(
            "SELECT sum(clicks)::int, sum(bots)::int, sum(uniques)::int FROM click_daily"
            " WHERE url_id = %s AND day >= %s AND day < %s",
            (url_id, first, first + timedelta(days=n)),
        ) == [tuple(sums)]
    # Every day with clicks is in exactly one run of each size, and no run is without one.
    daily = sql("SELECT url_id, day FROM click_daily")
    keys = {
        (n, day - timedelta(days=(day - EPOCH).days % n), url_id) for url_id, day in daily for n in queries.SPAN_DAYS
    }
    assert {tuple(r[:3]) for r in runs} == keys


def test_spans_are_filled_once_from_the_daily_rows_of_an_older_release(stack, monkeypatch):
    """0006 with daily rows an older worker wrote -> 0007 (click_spans, empty) -> a click by the
    new worker -> backfill: the spans hold every day once, the new click included once."""
    with database_before(stack, monkeypatch, "0007") as (db, settings, upgrade):
        db.execute(
            "INSERT INTO click_daily (url_id, day, clicks, bots, uniques) VALUES"
            " (1, '2026-11-20', 5, 1, 4), (1, '2026-11-21', 3, 0, 3), (1, '2026-09-01', 7, 2, 6)"
        )
        assert upgrade()[0] == "0007_click_spans"  # later migrations may follow
        url = {"id": 1, "user_id": 1, "short_code": "old"}
        clickstore.write(db, _click(url, "2026-11-21T09:00:00", 1), False)  # curl: a bot
        result = clickstore.backfill(db, settings)
        assert (result["backfilled"], result["spans_filled"]) == (1, 6)  # its event, counted once
        # Days 20,777 (11-20), 20,778 (11-21) and 20,697 (09-01) since 1970-01-01, by hand: the
        # runs of 4, 16 and 64 days that hold them start 11-19, 11-11, 10-10 and 08-31, 08-23, 08-07.
        late, early = (9, 2, 8), (7, 2, 6)
        assert db.fetch_all("SELECT days, start_day::text, clicks, bots, uniques FROM click_spans ORDER BY 1, 2") == [
            dict(zip(("days", "start_day", "clicks", "bots", "uniques"), row, strict=True))
            for row in [
                (4, "2026-08-31", *early),
                (4, "2026-11-19", *late),
                (16, "2026-08-23", *early),
                (16, "2026-11-11", *late),
                (64, "2026-08-07", *early),
                (64, "2026-10-10", *late),
            ]
        ]
        assert clickstore.backfill(db, settings)["spans_filled"] is None  # once
