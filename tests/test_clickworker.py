"""The click worker, in-process: batches, recovery of pending clicks, database outages."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
import redis as redis_lib

from app import clickstore, clickworker
from app.db import Database, DatabaseUnavailable
from tests.conftest import make_settings


@pytest.fixture
def worker_parts(clean):
    settings = make_settings(clean, clickworker_batch_size=50, clickworker_block_ms=100)
    db = Database(settings.database_url, 2, 5, settings.db_connect_options)
    client = clickworker.stream_client(settings)
    yield settings, db, client
    db.close()
    client.close()


def burst(client, code: str, n: int) -> None:
    for _ in range(n):
        assert client.get(f"/{code}").status_code == 302


def click_count(sql) -> int:
    return sql("SELECT count(*) FROM events WHERE event_type = 'click'")[0][0]


def test_worker_writes_queued_clicks_in_batches_and_empties_the_stream(client, make_url, worker_parts, sql, redis):
    settings, db, rclient = worker_parts
    url = make_url()
    burst(client, url["short_code"], 120)
    assert redis.xlen(settings.click_stream) == 120  # all queued, the first (a cache miss) too
    worker = clickworker.ClickWorker(settings, db, rclient, "test-1")
    worker.ensure_group()
    worker.ensure_group()  # idempotent
    while worker.step():
        pass
    worker.update_gauges()
    assert click_count(sql) == 120
    assert redis.xlen(settings.click_stream) == 0
    assert sql("SELECT count(DISTINCT click_id) FROM events WHERE event_type = 'click'")[0][0] == 120


def test_clicks_of_a_worker_that_died_mid_batch_are_written_once(client, make_url, worker_parts, sql, redis):
    settings, db, rclient = worker_parts
    url = make_url()
    burst(client, url["short_code"], 30)
    dead = clickworker.ClickWorker(settings, db, rclient, "dead-worker")
    dead.ensure_group()
    # The dead worker read a batch and wrote part of it, then died before acknowledging.
    reply = rclient.xreadgroup(clickworker.GROUP, "dead-worker", {settings.click_stream: ">"}, count=20)
    entries = reply[0][1]
    from app import clicks

    clicks.write_rows(db, [clicks.row_from_fields(f) for _, f in entries[:10]])
    # A worker under the same name after a restart finds its own pending entries at once.
    again = clickworker.ClickWorker(settings, db, rclient, "dead-worker")
    assert again.own_pending() == 20
    while again.step():
        pass
    assert click_count(sql) == 30
    assert redis.xlen(settings.click_stream) == 0


def test_another_worker_claims_entries_left_pending_too_long(client, make_url, worker_parts, sql):
    settings, db, rclient = worker_parts
    settings = settings.model_copy(update={"clickworker_claim_idle_ms": 1000})
    url = make_url()
    burst(client, url["short_code"], 10)
    clickworker.ClickWorker(settings, db, rclient, "gone").ensure_group()
    rclient.xreadgroup(clickworker.GROUP, "gone", {settings.click_stream: ">"}, count=100)
    other = clickworker.ClickWorker(settings, db, rclient, "other")
    assert other.claim_stale() == 0  # not idle long enough yet
    time.sleep(1.1)
    assert other.claim_stale() == 10
    assert click_count(sql) == 10


def test_worker_waits_out_a_database_outage_and_loses_nothing(clean, client, make_url, worker_parts, sql):
    settings, db, rclient = worker_parts
    url = make_url()
    burst(client, url["short_code"], 5)
    worker = clickworker.ClickWorker(settings, db, rclient, "w")
    thread = threading.Thread(target=worker.run, daemon=True)
    clean.stop_pgbouncer()
    try:
        thread.start()
        burst(client, url["short_code"], 5)  # from the cache, while the database is away
        time.sleep(1.0)
        assert clickworker.FAILURES.labels("database")._value.get() >= 1
        # the backlog gauge follows the stream during the outage, not frozen at its last success
        deadline = time.monotonic() + 10
        while clickworker.BACKLOG._value.get() != 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert clickworker.BACKLOG._value.get() == 10
    finally:
        clean.start_pgbouncer()
    deadline = time.monotonic() + 20
    while click_count(sql) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.stopping.set()
    thread.join(5)
    assert not thread.is_alive()
    assert click_count(sql) == 10


def test_worker_survives_a_redis_outage(clean, client, make_url, worker_parts, sql):
    settings, db, rclient = worker_parts
    worker = clickworker.ClickWorker(settings, db, rclient, "w")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    clean.stop_redis()
    time.sleep(0.8)
    assert clickworker.FAILURES.labels("redis")._value.get() >= 1
    clean.start_redis()
    url = make_url()
    burst(client, url["short_code"], 3)
    deadline = time.monotonic() + 20
    while click_count(sql) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.stopping.set()
    thread.join(15)
    assert click_count(sql) == 3


def test_malformed_stream_entries_are_dropped_not_fatal(worker_parts, sql, redis):
    settings, db, rclient = worker_parts
    worker = clickworker.ClickWorker(settings, db, rclient, "w")
    worker.ensure_group()
    redis.xadd(settings.click_stream, {"junk": "1"})
    assert worker.step() == 1
    assert redis.xlen(settings.click_stream) == 0
    assert click_count(sql) == 0


def test_an_entry_that_is_not_utf8_is_stored_not_a_poison_for_the_stream(client, make_url, worker_parts, sql, redis):
    """Header text reaches the stream as bytes from whatever wrote it: an invalid byte costs
    that click a replacement character, never the worker's next read (or every one after)."""
    settings, db, rclient = worker_parts
    url = make_url()
    worker = clickworker.ClickWorker(settings, db, rclient, "w")
    worker.ensure_group()
    burst(client, url["short_code"], 1)
    raw = redis_lib.Redis.from_url(settings.redis_url)  # bytes in, as a foreign writer sends them
    raw.xadd(
        settings.click_stream,
        {
            "c": "bad-utf8-1",
            "u": str(url["id"]),
            "o": "",
            "t": "2026-12-01T01:00:00",
            "r": b"https://r/caf\xe9",
            "s": url["short_code"],
        },
    )
    raw.close()
    burst(client, url["short_code"], 1)
    while worker.step():
        pass
    assert click_count(sql) == 3
    assert redis.xlen(settings.click_stream) == 0
    referrer = sql("SELECT details->>'referrer' FROM events WHERE click_id = 'bad-utf8-1'")[0][0]
    assert referrer == "https://r/caf\ufffd"


def test_main_refuses_to_run_without_redis(monkeypatch):
    monkeypatch.setenv("SHORTENER_REDIS_URL", "")
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        assert clickworker.main() == 2
    finally:
        get_settings.cache_clear()


def test_a_click_the_database_refuses_does_not_block_the_queue(client, make_url, worker_parts, sql, redis):
    settings, db, rclient = worker_parts
    url = make_url()
    burst(client, url["short_code"], 2)
    worker = clickworker.ClickWorker(settings, db, rclient, "w")
    worker.ensure_group()
    # Written by something other than our redirect: a timestamp PostgreSQL cannot read.
    redis.xadd(settings.click_stream, {"c": "bad1", "u": str(url["id"]), "o": "", "t": "not-a-time", "s": "x"})
    burst(client, url["short_code"], 1)
    while worker.step():
        pass
    assert click_count(sql) == 3
    assert redis.xlen(settings.click_stream) == 0
    assert clickworker.FAILURES.labels("refused")._value.get() >= 1


def test_concurrent_writers_of_overlapping_clicks_never_deadlock(make_url, clean, sql):
    """The worker and every GET /events write the same queued clicks at once, in batches that
    overlap. Rows of one second share their timestamp, so only a total order (timestamp, then
    click id) makes every writer take the unique index's row locks in the same order; ordering
    by time alone deadlocked under the 5,000-user load test."""
    import random

    from app import clicks

    url = make_url()
    settings = make_settings(clean)
    rows = [
        clicks.row_from_fields({"c": f"{i:04x}-{random.random()}", "t": "2026-11-28T04:31:16", "u": str(url["id"])})
        for i in range(400)
    ]
    errors: list[BaseException] = []
    written: list[int] = []

    def writer(seed: int) -> None:
        db = Database(settings.database_url, 1, 5, settings.db_connect_options)
        rng = random.Random(seed)
        try:
            for _ in range(8):
                batch = rng.sample(rows, 300)
                written.append(clicks.write_rows(db, batch))
        except BaseException as error:  # any failure of a writer fails the test
            errors.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(written) == len(rows)
    assert sql("SELECT count(*), count(DISTINCT click_id) FROM events WHERE event_type = 'click'")[0] == (400, 400)


def test_backlog_gauge_follows_the_stream_while_an_insert_hangs(client, make_url, worker_parts, monkeypatch):
    """PgBouncer holds a query for minutes while PostgreSQL is away; the gauges must not wait."""
    settings, db, rclient = worker_parts
    url = make_url()
    worker = clickworker.ClickWorker(settings, db, rclient, "hung")
    worker.gauge_interval = 0.1
    release = threading.Event()
    monkeypatch.setattr(worker, "_write", lambda entries: release.wait(30) and 0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        burst(client, url["short_code"], 7)
        deadline = time.monotonic() + 10
        while clickworker.BACKLOG._value.get() != 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clickworker.BACKLOG._value.get() == 7
    finally:
        worker.stopping.set()
        release.set()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("linger_ms, most_batches", [(1000, 3), (0, None)])
def test_under_a_steady_trickle_the_worker_lingers_to_fill_its_batches(
    client, make_url, worker_parts, sql, linger_ms, most_batches
):
    settings, db, rclient = worker_parts
    settings = settings.model_copy(update={"clickworker_batch_size": 500, "clickworker_linger_ms": linger_ms})
    url = make_url()
    burst(client, url["short_code"], 1)  # the cache miss: every later click is a cache hit
    worker = clickworker.ClickWorker(settings, db, rclient, "linger")
    worker.ensure_group()
    while worker.step():
        pass
    batches: list[int] = []
    write = worker._write

    def recording_write(entries):
        if entries:
            batches.append(len(entries))
        return write(entries)

    worker._write = recording_write
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        for _ in range(6):  # 60 clicks over ~0.5 s: a trickle, never a full batch
            burst(client, url["short_code"], 10)
            time.sleep(0.08)
        deadline = time.monotonic() + 10
        while click_count(sql) < 61 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stopping.set()
        thread.join(timeout=10)
    assert click_count(sql) == 61 and sum(batches) == 60
    if most_batches is not None:
        assert len(batches) <= most_batches, batches
    else:
        assert len(batches) >= 6, batches  # without lingering, every burst is a batch of its own


def test_a_batch_that_outlasts_the_statement_timeout_is_written_in_halves(
    client, make_url, worker_parts, sql, redis, monkeypatch
):
    settings, db, rclient = worker_parts
    url = make_url()
    burst(client, url["short_code"], 30)
    real_write = clickstore.write

    def slow_for_big_batches(database, rows, keep):
        if len(rows) > 10:
            # The very error PostgreSQL raises when statement_timeout cancels a statement.
            conn = psycopg2.connect(settings.database_url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET statement_timeout = 1")
                    cur.execute("SELECT pg_sleep(1)")
            except psycopg2.errors.QueryCanceled as exc:
                raise DatabaseUnavailable(str(exc)) from exc
            finally:
                conn.close()
        return real_write(database, rows, keep)

    monkeypatch.setattr(clickworker.clickstore, "write", slow_for_big_batches)
    before = clickworker.FAILURES.labels("timeout")._value.get()
    worker = clickworker.ClickWorker(settings, db, rclient, "halves")
    worker.ensure_group()
    while worker.step():
        pass
    assert click_count(sql) == 30
    assert redis.xlen(settings.click_stream) == 0
    assert clickworker.FAILURES.labels("timeout")._value.get() > before
