"""Click analytics against the real stack: the worker's parsing and rollups, the statistics API
with hand-computed expectations, privacy, partitions and retention, the upgrade path."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import pytest

from app import clickparse, clicks, clickstore, clickworker
from app import migrate as migrations
from app import sql as sql_text
from app.config import Settings, get_settings
from app.db import Database, DatabaseUnavailable
from tests import test_clickworker
from tests.conftest import make_settings

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.0 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# (time UTC, user agent, address, referrer): two days, a visitor seen on both sides of midnight,
# one address with two browsers, a bot, referrers with and without "www.", none.
CLICK_SET = [
    ("2026-11-28T10:15:00", CHROME, "10.0.0.1", "https://www.news.example/a"),
    ("2026-11-28T10:45:00", CHROME, "10.0.0.1", "https://news.example/b"),
    ("2026-11-28T11:05:00", IPHONE, "10.0.0.2", ""),
    ("2026-11-28T23:59:59", IPHONE, "10.0.0.2", "https://t.co/x"),
    ("2026-11-29T00:00:00", IPHONE, "10.0.0.2", "https://t.co/y"),
    ("2026-11-29T08:00:00", GOOGLEBOT, "10.0.0.3", ""),
    ("2026-11-29T08:30:00", CHROME, "10.0.0.2", "https://news.example/"),
]


# The click worker's tests' fixture: settings with small batches, a pool, a Redis client.
worker_parts = test_clickworker.worker_parts


def queue(redis, stream: str, url: dict, click_set: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    entries = []
    for ts, agent, address, referrer in click_set:
        click = dataclasses.replace(clicks.new_click(referrer, agent, address=address), ts=ts)
        fields = click.fields(url["id"], url["user_id"], url["short_code"])
        redis.xadd(stream, fields)
        entries.append(fields)
    return entries


def run_worker(settings, db, client) -> None:
    worker = clickworker.ClickWorker(settings, db, client, "analytics-test")
    worker.ensure_group()
    while worker.step():
        pass


def test_statistics_of_a_generated_click_set(client, make_url, worker_parts, redis, sql):
    settings, db, rclient = worker_parts
    url = make_url()
    other = make_url()
    queue(redis, settings.click_stream, url, CLICK_SET)
    queue(redis, settings.click_stream, other, CLICK_SET[:2])
    run_worker(settings, db, rclient)

    stats = client.get(f"/urls/{url['id']}/stats?from=2026-11-28&to=2026-11-30").get_json()
    assert stats["from"] == "2026-11-28T00:00:00" and stats["to"] == "2026-11-30T00:00:00"
    assert stats["granularity"] == "day"
    assert (stats["total_clicks"], stats["humans"], stats["bots"]) == (7, 6, 1)
    # Day 1: (10.0.0.1, Chrome), (10.0.0.2, iPhone). Day 2: the iPhone again (a new day), the
    # bot, (10.0.0.2, Chrome). Visitors are per day: 2 + 3.
    assert stats["unique_visitors"] == 5
    assert stats["series"] == [
        {"time": "2026-11-28T00:00:00", "clicks": 4, "humans": 4, "bots": 0, "unique_visitors": 2},
        {"time": "2026-11-29T00:00:00", "clicks": 3, "humans": 2, "bots": 1, "unique_visitors": 3},
    ]
    assert stats["referrers"] == [
        {"value": "news.example", "clicks": 3},
        {"value": "(none)", "clicks": 2},
        {"value": "t.co", "clicks": 2},
    ]
    assert stats["browsers"] == [
        {"value": "Chrome", "clicks": 3},
        {"value": "Mobile Safari", "clicks": 3},
        {"value": "Googlebot", "clicks": 1},
    ]
    assert stats["operating_systems"] == [
        {"value": "Windows", "clicks": 3},
        {"value": "iOS", "clicks": 3},
        {"value": "Other", "clicks": 1},
    ]
    assert stats["devices"] == [
        {"value": "desktop", "clicks": 3},
        {"value": "mobile", "clicks": 3},
        {"value": "bot", "clicks": 1},
    ]
    # The full referrer stays in the event; the statistics only keep its domain.
    referrers = sql("SELECT details->>'referrer' FROM events WHERE url_id = %s AND event_type = 'click'", (url["id"],))
    assert ("https://www.news.example/a",) in referrers


def test_hourly_series_time_zones_and_the_top_table(client, make_url, worker_parts, redis):
    settings, db, rclient = worker_parts
    url = make_url()
    queue(redis, settings.click_stream, url, CLICK_SET)
    run_worker(settings, db, rclient)
    # 11:00+01:00 is 10:00 UTC; 12:30 UTC widens to the end of its hour.
    stats = client.get(
        f"/urls/{url['id']}/stats",
        query_string={
            "from": "2026-11-28T11:00:00+01:00",
            "to": "2026-11-28T12:30:00Z",
            "granularity": "hour",
            "top": 1,
        },
    ).get_json()
    assert (stats["from"], stats["to"]) == ("2026-11-28T10:00:00", "2026-11-28T13:00:00")
    assert stats["series"] == [
        {"time": "2026-11-28T10:00:00", "clicks": 2, "humans": 2, "bots": 0},
        {"time": "2026-11-28T11:00:00", "clicks": 1, "humans": 1, "bots": 0},
        {"time": "2026-11-28T12:00:00", "clicks": 0, "humans": 0, "bots": 0},
    ]
    assert stats["total_clicks"] == 3
    # Unique visitors and the tables cover the whole day the range touches; top=1 keeps one row.
    assert stats["unique_visitors"] == 2
    assert stats["referrers"] == [{"value": "news.example", "clicks": 2}]


def test_a_click_delivered_twice_or_drained_first_is_counted_once(client, make_url, worker_parts, redis, sql):
    settings, db, rclient = worker_parts
    url = make_url()
    entries = queue(redis, settings.click_stream, url, CLICK_SET)
    # GET /events writes the queued clicks into events first (no statistics there)...
    assert len(client.get(f"/events?event_type=click&url_id={url['id']}").get_json()) == 7
    run_worker(settings, db, rclient)
    # ...and a redelivery of the same clicks (a worker killed before its XACK) adds nothing.
    for fields in entries:
        redis.xadd(settings.click_stream, fields)
    run_worker(settings, db, rclient)
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'") == [(7,)]
    assert sql("SELECT count(*) FROM clicks") == [(7,)]
    assert sql("SELECT sum(clicks), sum(bots) FROM click_hourly") == [(7, 1)]
    assert sql("SELECT sum(clicks), sum(uniques) FROM click_daily") == [(7, 5)]
    assert sql("SELECT dimension, sum(clicks) FROM click_dims GROUP BY 1 ORDER BY 1") == [
        ("browser", 7),
        ("device", 7),
        ("os", 7),
        ("referrer", 7),
    ]


def test_no_address_is_stored_unless_asked_and_visitor_ids_change_daily(app_factory, make_url, worker_parts, sql):
    settings, db, rclient = worker_parts
    url = make_url()
    client = app_factory().test_client()
    # Through the real redirect (and the Redis script): the address travels in the stream only.
    for _ in range(2):
        response = client.get(
            f"/{url['short_code']}", environ_base={"REMOTE_ADDR": "192.0.2.7"}, headers={"User-Agent": CHROME}
        )
        assert response.status_code == 302
    run_worker(settings, db, rclient)
    assert sql("SELECT count(*), count(client_addr), count(DISTINCT visitor) FROM clicks") == [(2, 0, 1)]
    events = sql("SELECT details::text FROM events WHERE event_type = 'click'")
    assert events and not any("192.0.2.7" in text for (text,) in events)
    [(day, key)] = sql("SELECT day, key FROM visitor_keys")
    [(visitor,)] = sql("SELECT DISTINCT visitor FROM clicks")
    assert visitor == clickparse.visitor_id(bytes(key), "192.0.2.7", CHROME)
    assert day == sql("SELECT max(ts)::date FROM clicks")[0][0]

    # SHORTENER_CLICKS_KEEP_ADDRESSES=true: the address is kept too.
    assert clickstore.write(db, [clicks.row_from_fields(_fields(url, "2026-11-29T09:00:00", "198.51.100.9"))], True)
    assert sql("SELECT host(client_addr) FROM clicks WHERE client_addr IS NOT NULL") == [("198.51.100.9",)]
    # The same address and agent on two days: two unrelated ids (one key per day).
    clickstore.write(db, [clicks.row_from_fields(_fields(url, "2026-11-28T09:00:00", "198.51.100.9"))], False)
    ids = sql("SELECT visitor FROM clicks WHERE ts::date IN ('2026-11-28', '2026-11-29') ORDER BY ts")
    assert len({v for (v,) in ids}) == 2


def _fields(url: dict, ts: str, address: str) -> dict[str, str]:
    click = dataclasses.replace(clicks.new_click("", CHROME, address=address), ts=ts)
    return click.fields(url["id"], url["user_id"], url["short_code"])


def test_partitions_are_made_ahead_and_retention_drops_whole_months(clean, make_url, worker_parts, sql):
    settings, db, _ = worker_parts
    url = make_url()
    kept = make_settings(clean, clicks_retention_months=2, clicks_partitions_ahead=2)
    result = clickstore.maintain(db, kept, today=date(2026, 11, 30))
    assert result["ensured"] == ["clicks_2026_11", "clicks_2026_12", "clicks_2027_01"]
    # Clicks of August and September arrive (a late backlog): their months are made on demand.
    for ts in ("2026-08-31T23:00:00", "2026-09-01T00:00:00"):
        clickstore.write(db, [clicks.row_from_fields(_fields(url, ts, "10.0.0.1"))], False)
    parts = {name for (name,) in sql("SELECT relname FROM pg_class WHERE relname ~ '^clicks_2026_0[89]$'")}
    assert parts == {"clicks_2026_08", "clicks_2026_09"}
    # Two months kept before November: September and October stay, August goes whole.
    result = clickstore.maintain(db, kept, today=date(2026, 11, 30))
    assert result["dropped"] == ["clicks_2026_08"]
    assert sql("SELECT ts FROM clicks WHERE ts < '2026-10-01' ORDER BY ts") == [(datetime(2026, 9, 1),)]
    # The rollups keep August's click, and the statistics still count it.
    assert sql("SELECT sum(clicks) FROM click_hourly WHERE hour < '2026-09-01'") == [(1,)]
    assert clickstore.maintain(db, kept, today=date(2026, 11, 30))["dropped"] == []
    # A click of the dropped month written again (another process still believed in it): the
    # month comes back instead of the batch failing.
    clickstore._partitions.add(date(2026, 8, 1))
    clickstore.write(db, [clicks.row_from_fields(_fields(url, "2026-08-15T00:00:00", "10.0.0.9"))], False)
    assert sql("SELECT count(*) FROM clicks WHERE ts < '2026-09-01'") == [(1,)]
    # Visitor keys and seen visitors of days before yesterday are deleted.
    assert sql("SELECT count(*) FROM visitor_keys WHERE day < current_date - 1") == [(1,)]
    clickstore.maintain(db, settings)
    assert sql("SELECT count(*) FROM visitor_keys WHERE day < current_date - 1") == [(0,)]
    assert sql("SELECT count(*) FROM click_visitors WHERE day < current_date - 1") == [(0,)]


def test_the_worker_maintains_the_partitions_on_start(worker_parts, sql):
    settings, db, rclient = worker_parts
    worker = clickworker.ClickWorker(settings, db, rclient, "analytics-test")
    threading.Timer(1.0, worker.stopping.set).start()
    worker.run()
    month = datetime.now(UTC).strftime("clicks_%Y_%m")
    assert sql("SELECT count(*) FROM pg_class WHERE relname = %s", (month,)) == [(1,)]


@contextlib.contextmanager
def database_before(stack, monkeypatch, version: str) -> Iterator[tuple[Database, Settings, Callable[[], list[str]]]]:
    """An empty database migrated up to ``version`` (excluded), with user 1 owning link 1
    ("old"); the third item applies the remaining migrations and returns their versions."""
    stack.reset_database()
    settings = make_settings(stack)
    db = Database(settings.database_url, 2, 10, settings.db_connect_options)
    every = migrations.migration_files()

    def upgrade() -> list[str]:
        monkeypatch.setattr(migrations, "migration_files", lambda: every)
        return migrations.migrate(db, settings)

    try:
        monkeypatch.setattr(migrations, "migration_files", lambda: [m for m in every if m[0] < version])
        migrations.migrate(db, settings)
        db.execute("INSERT INTO users (username, email) VALUES ('old', 'old@example.com')")
        db.execute("INSERT INTO urls (user_id, short_code, original_url) VALUES (1, 'old', 'https://example.com/')")
        yield db, settings, upgrade
    finally:
        db.close()


def test_upgrade_of_a_database_that_already_holds_clicks(stack, monkeypatch):
    """0003 with clicks in events -> 0004 -> backfill: nothing lost, statistics filled."""
    with database_before(stack, monkeypatch, "0004") as (db, settings, upgrade):
        for i, (ts, agent, _, referrer) in enumerate(CLICK_SET):
            details = {"short_code": "old", "referrer": referrer or None, "user_agent": agent}
            db.execute(
                'INSERT INTO events (url_id, user_id, event_type, "timestamp", details, click_id)'
                " VALUES (1, 1, 'click', %s, %s, %s)",
                (ts, json.dumps(details), f"old-{i}"),
            )
        applied = upgrade()
        assert applied == [v for v, _ in migrations.migration_files() if v >= "0004"]
        # Two days of one link: one run of each size holds both (2026-11-27 .. for 4 days, ...).
        assert clickstore.backfill(db, settings) == {"backfilled": 7, "done_before": None, "spans_filled": 3}
        # Finished once: every later run (the shortener role's, after each converge) does nothing.
        again = clickstore.backfill(db, settings)
        assert again["backfilled"] == 0 and again["done_before"] and again["spans_filled"] is None
        # A run that never recorded its end (interrupted) feeds everything again: counted once.
        db.execute("DELETE FROM clicks_backfill")
        assert clickstore.backfill(db, settings)["backfilled"] == 7
        assert db.fetch_one("SELECT count(*) AS n FROM events WHERE event_type = 'click'")["n"] == 7
        totals = db.fetch_one("SELECT sum(clicks) AS c, sum(bots) AS b, sum(uniques) AS u FROM click_daily")
        # Old clicks carry no address: a visitor is its user agent on that day (day 1: Chrome,
        # iPhone; day 2: iPhone, Googlebot, Chrome).
        assert (totals["c"], totals["b"], totals["u"]) == (7, 1, 5)


def test_several_consumers_in_one_process_share_the_stream(make_url, worker_parts, redis, sql):
    settings, db, rclient = worker_parts
    url = make_url()
    entries = queue(redis, settings.click_stream, url, CLICK_SET * 30)
    for fields in entries[:50]:  # delivered twice, stored once
        redis.xadd(settings.click_stream, fields)
    stopping = threading.Event()
    workers = [clickworker.ClickWorker(settings, db, rclient, f"pair-{i}", stopping, primary=i == 0) for i in range(2)]

    def stop_when_empty() -> None:
        deadline = time.monotonic() + 60
        while redis.xlen(settings.click_stream) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopping.set()

    threading.Thread(target=stop_when_empty).start()
    clickworker.run_all(workers)
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'") == [(210,)]
    assert sql("SELECT sum(clicks) FROM click_daily") == [(210,)]
    assert redis.xlen(settings.click_stream) == 0


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("", ("(none)", "(none)", "other", False)),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0"
            " Mobile/15E148 Safari/604.1",
            ("Mobile Safari", "iOS", "tablet", False),
        ),
        ("SomethingNew/1.0", ("Other", "Other", "other", False)),
        (GOOGLEBOT, ("Googlebot", "Other", "bot", True)),
    ],
)
def test_user_agents_become_browser_os_device_and_bot(agent, expected):
    parsed = clickparse.agent(agent)
    assert (parsed.browser, parsed.os, parsed.device, parsed.is_bot) == expected


def test_referrer_domains_and_addresses():
    assert clickparse.referrer_domain("https://WWW.News.Example:8443/a?b") == "news.example"
    assert clickparse.referrer_domain("") == "(none)"
    assert clickparse.referrer_domain("not a url") == "Other"
    assert clickparse.referrer_domain("http://[::1") == "Other"  # urlsplit refuses it
    assert clickparse.storable_address(" 192.0.2.1 ") == "192.0.2.1"
    assert clickparse.storable_address("unknown") is None
    clickparse.warm_up()  # loads every rule; must not raise


def test_the_maintenance_and_backfill_commands(clean, monkeypatch, capsys):
    monkeypatch.setenv("SHORTENER_DATABASE_URL", clean.database_url)
    get_settings.cache_clear()  # the settings of this environment, not of an earlier test
    assert clickstore.main(["maintain"]) == 0
    assert json.loads(capsys.readouterr().out)["ensured"][0] == datetime.now(UTC).strftime("clicks_%Y_%m")
    assert clickstore.main(["backfill"]) == 0
    assert json.loads(capsys.readouterr().out) == {"backfilled": 0, "done_before": None, "spans_filled": 0}
    assert clickstore.main(["backfill"]) == 0  # ran to the end once: now it does nothing
    assert json.loads(capsys.readouterr().out)["done_before"]
    get_settings.cache_clear()


def test_a_batch_is_one_statement_in_autocommit(make_url, worker_parts, monkeypatch):
    """Round trips through PgBouncer are the worker's fixed cost per batch (docs/capacity.md,
    "Ingestion"): once the day's key and the month's partition are known, a batch is ONE
    statement, its own transaction, without BEGIN and COMMIT."""
    _, db, _ = worker_parts
    url = make_url()
    assert clickstore.write(db, [clicks.row_from_fields(_fields(url, "2026-11-29T09:00:00", "10.0.0.1"))], False) == 1
    sent: list[str] = []
    fetch_one, execute = db.fetch_one, db.execute

    def recording(real):
        return lambda statement, params=None: sent.append(statement) or real(statement, params)

    def no_transaction():
        raise AssertionError("a batch needs no transaction block")

    monkeypatch.setattr(db, "fetch_one", recording(fetch_one))
    monkeypatch.setattr(db, "execute", recording(execute))
    monkeypatch.setattr(db, "transaction", no_transaction)
    batch = [clicks.row_from_fields(_fields(url, f"2026-11-29T10:00:{s:02d}", f"10.0.1.{s}")) for s in range(50)]
    assert clickstore.write(db, batch, False) == 50
    assert sent == [sql_text.WRITE_CLICKS]


def test_a_visitor_key_pruned_while_it_is_stored_fails_the_batch_for_a_retry(make_url, worker_parts, monkeypatch):
    _, db, _ = worker_parts
    url = make_url()
    fetch_one = db.fetch_one
    monkeypatch.setattr(db, "fetch_one", lambda q, p=None: None if q == sql_text.VISITOR_KEY else fetch_one(q, p))
    with pytest.raises(DatabaseUnavailable):
        clickstore.write(db, [clicks.row_from_fields(_fields(url, "2026-11-20T09:00:00", "10.0.0.1"))], False)
