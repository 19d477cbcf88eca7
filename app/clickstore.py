"""Clicks into the statistics tables: parse, hash, write in one statement; keep the partitions.

``write`` is what the click worker (and a redirect writing its own click while Redis is out)
calls for a batch: each click gets its browser, OS, device type, bot flag, referrer domain and
daily visitor id (app/clickparse.py), then sql.WRITE_CLICKS stores the event, the raw click and
the rollups in one statement. ``maintain`` creates next months' partitions, drops those past
the retention and forgets old visitor keys; the worker runs it every
``clicks_maintenance_seconds``. Run by hand: ``python -m app.clickstore maintain|backfill`` (the
shortener role runs ``backfill`` after each converge; it works once, then does nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import psycopg2.errors

from app import clickparse, sql
from app.config import Settings, get_settings
from app.db import Database, DatabaseUnavailable

log = logging.getLogger(__name__)

BACKFILL_BATCH = 2000

# Per process: the day keys and partitions already fetched or made (a day key never changes
# once stored; a partition is only dropped months after its last click).
_day_keys: dict[date, bytes] = {}
_partitions: set[date] = set()
_lock = threading.Lock()


def forget() -> None:
    """Drops what this process remembers (tests empty the tables under it)."""
    with _lock:
        _day_keys.clear()
        _partitions.clear()


def _day_key(db: Database, day: date) -> bytes:
    known = _day_keys.get(day)
    if known is not None:
        return known
    # Another writer may store the day's key first: ON CONFLICT keeps theirs, and we read it.
    # Each statement commits on its own (autocommit), so the key we remember is stored. A
    # click days late may see the maintenance prune its day's key in between: the batch is
    # then retried like one that met an outage, and stores the key again.
    db.execute(sql.INSERT_VISITOR_KEY, (day, secrets.token_bytes(32)))
    row = db.fetch_one(sql.VISITOR_KEY, (day,))
    if row is None:
        raise DatabaseUnavailable(f"the visitor key of {day} was pruned meanwhile")
    key = bytes(row["key"])
    with _lock:
        if len(_day_keys) > 8:
            _day_keys.clear()
        _day_keys[day] = key
    return key


def _month(day: date) -> date:
    return day.replace(day=1)


def enrich(row: dict[str, Any], day_key: bytes, keep_addresses: bool) -> dict[str, Any]:
    """A clicks.row_from_fields record with what the statistics tables need."""
    details = row["details"]
    user_agent = details.get("user_agent") or ""
    agent = clickparse.agent(user_agent)
    address = row.get("address", "")
    return {
        **{k: v for k, v in row.items() if k != "address"},
        "visitor": clickparse.visitor_id(day_key, address, user_agent),
        "is_bot": agent.is_bot,
        "browser": agent.browser,
        "os": agent.os,
        "device": agent.device,
        "referrer_domain": clickparse.referrer_domain(details.get("referrer") or ""),
        "client_addr": clickparse.storable_address(address) if keep_addresses and address else None,
    }


def _day(ts: str | datetime) -> date:
    return (ts if isinstance(ts, datetime) else datetime.fromisoformat(ts)).date()


def write(db: Database, rows: Iterable[dict[str, Any]], keep_addresses: bool) -> int:
    """Writes a batch of clicks (events, raw clicks, rollups); returns how many events were new.

    Raises ValueError for a click whose time is not a timestamp (the worker drops it)."""
    batch = list(rows)
    if not batch:
        return 0
    days = [_day(row["ts"]) for row in batch]
    try:
        return _write(db, batch, days, keep_addresses)
    except psycopg2.errors.CheckViolation:
        # "no partition found for row": another process dropped a month this one still
        # believed in (a click older than the retention). Create it again, once.
        with _lock:
            _partitions.clear()
        return _write(db, batch, days, keep_addresses)


def _write(db: Database, batch: list[dict[str, Any]], days: list[date], keep_addresses: bool) -> int:
    # Autocommit throughout: the day keys and partitions are idempotent and may commit on their
    # own, and WRITE_CLICKS is one statement, so one transaction without BEGIN and COMMIT round
    # trips through PgBouncer (docs/capacity.md, "Ingestion").
    keys = {day: _day_key(db, day) for day in set(days)}
    for month in {_month(day) for day in days} - _partitions:
        db.fetch_one(sql.CLICKS_PARTITION, (month,))
        with _lock:
            _partitions.add(month)
    payload = [enrich(row, keys[day], keep_addresses) for row, day in zip(batch, days, strict=True)]
    result = db.fetch_one(sql.WRITE_CLICKS, (json.dumps(payload, default=str),))
    return int(result["events"]) if result else 0


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def maintain(db: Database, settings: Settings, today: date | None = None) -> dict[str, list[str]]:
    """Partitions for this month and ``clicks_partitions_ahead`` more; partitions older than
    ``clicks_retention_months`` dropped whole; visitor keys of days before yesterday deleted."""
    today = today or datetime.now(UTC).date()
    created = []
    with db.transaction() as cur:
        for ahead in range(settings.clicks_partitions_ahead + 1):
            month = _add_months(today, ahead)
            cur.execute(sql.CLICKS_PARTITION, (month,))
            created.append(cur.fetchone()["name"])
        dropped: list[str] = []
        if settings.clicks_retention_months:
            cur.execute(sql.CLICKS_DROP_PARTITIONS, (_add_months(today, -settings.clicks_retention_months),))
            dropped = [r["name"] for r in cur.fetchall()]
        cur.execute(sql.PRUNE_VISITORS)
    if dropped:
        with _lock:
            _partitions.clear()
        log.info("dropped click partitions past the retention", extra={"partitions": dropped})
    return {"ensured": created, "dropped": dropped}


def fill_spans(db: Database) -> int | None:
    """click_spans rebuilt from click_daily, once (migration 0007 made it empty); the rows made,
    or None when it was done before. Under a SHARE lock on click_daily: the click writers wait
    (22 s at 5.9 million clicks, docs/analytics.md), so nothing is missed or counted twice, whatever release
    wrote the daily rows. Never needed again: every writer since updates both in one statement."""
    if db.fetch_one(sql.SPANS_FILLED) is not None:
        return None
    with db.transaction() as cur:
        for statement in sql.FILL_SPANS:
            cur.execute(statement)
        filled = int(cur.fetchone()["spans"])
    log.info("click spans filled from the daily rollup", extra={"spans": filled})
    return filled


def backfill(db: Database, settings: Settings) -> dict[str, Any]:
    """Feeds the clicks already in ``events`` (from before the analytics) to the statistics,
    oldest first, once: a run that reaches the end records it (clicks_backfill), and every run
    after that does nothing. An interrupted run is simply run again: a click already counted
    is skipped by WRITE_CLICKS. Such clicks carry no address, so their visitor id rests on the
    user agent alone. Returns {"backfilled": events fed now, "done_before": when, or None,
    "spans_filled": click_spans rows made now (fill_spans), or None}."""
    result = _backfill_events(db, settings)
    # After the events: the clicks just fed wrote their spans already, and the fill recounts all.
    return {**result, "spans_filled": fill_spans(db)}


def _backfill_events(db: Database, settings: Settings) -> dict[str, Any]:
    before = db.fetch_one(sql.BACKFILL_DONE)
    if before is not None:
        return {"backfilled": 0, "done_before": before["finished_at"].isoformat()}
    last = int(db.fetch_one(sql.LAST_EVENT_ID)["id"])
    after = 0
    done = 0
    while True:
        rows = db.fetch_all(sql.CLICK_EVENTS_AFTER, (after, last, BACKFILL_BATCH))
        if not rows:
            break
        after = rows[-1]["id"]
        batch = [
            {
                "click_id": r["click_id"],
                "url_id": r["url_id"],
                "user_id": r["user_id"],
                "ts": r["ts"].isoformat(),
                "details": r["details"],
            }
            for r in rows
        ]
        write(db, batch, settings.clicks_keep_addresses)
        done += len(batch)
        log.info("backfilled clicks", extra={"done": done, "last_event_id": after})
    db.execute(sql.BACKFILL_FINISHED, (done,))
    return {"backfilled": done, "done_before": None}


def main(argv: list[str] | None = None) -> int:
    from app.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m app.clickstore", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["maintain", "backfill"])
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    db = Database(settings.database_url, 1, 30.0, settings.db_connect_options)
    try:
        if args.command == "maintain":
            print(json.dumps(maintain(db, settings)))
        else:
            print(json.dumps(backfill(db, settings)))
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
