"""Clicks: from a redirect to a row in ``events``, without losing one.

While Redis is up a redirect only appends the click to a Redis stream (in the same round trip
as the cache read, see cache.py); the click worker (app/clickworker.py) writes the stream to
PostgreSQL in batches. When Redis is unavailable the redirect writes its click itself.

Each click carries an id made by the redirect. ``events.click_id`` is unique and every write
is ``ON CONFLICT DO NOTHING``, so a click delivered twice (a worker killed after its insert but
before its acknowledgement, or drained by GET /events and by the worker) is stored once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from app import metrics, sql
from app.cache import Cache, Unavailable
from app.db import Database

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 512
DRAIN_PAGE = 1000


def header_text(value: str | None) -> str:
    """A request header as stored text: WSGI hands headers over decoded as latin-1, so bytes
    that were UTF-8 are decoded again; NUL and other C0 controls are dropped."""
    if not value:
        return ""
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("latin-1").decode("utf-8")
    cleaned = "".join(ch for ch in value if ch >= " " or ch == "\t")
    return cleaned.encode("utf-8", "replace").decode("utf-8")[:MAX_HEADER_CHARS]


def new_click(referrer: str | None, user_agent: str | None) -> dict[str, str]:
    """The fields a click is queued with (short names keep the stream small)."""
    return {
        "c": secrets.token_hex(12),
        "t": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "r": header_text(referrer),
        "a": header_text(user_agent),
    }


def row_from_fields(fields: Mapping[str, str]) -> dict[str, Any]:
    """A stream entry (or a click not queued) as the JSON record INSERT_CLICKS reads."""
    return {
        "click_id": fields["c"],
        "url_id": int(fields["u"]) if fields.get("u") else None,
        "user_id": int(fields["o"]) if fields.get("o") else None,
        "ts": fields["t"],
        "details": {
            "short_code": fields.get("s", ""),
            "referrer": fields.get("r") or None,
            "user_agent": fields.get("a") or None,
        },
    }


def write_rows(db: Database, rows: Iterable[dict[str, Any]]) -> int:
    """Inserts clicks in one statement; returns how many were new."""
    payload = list(rows)
    if not payload:
        return 0
    with db.transaction() as cur:
        cur.execute(sql.INSERT_CLICKS, (json.dumps(payload),))
        return cur.rowcount


def write_direct(db: Database, click: dict[str, str], url_id: int, user_id: int | None, code: str) -> None:
    fields = dict(click, u=str(url_id), o="" if user_id is None else str(user_id), s=code)
    write_rows(db, [row_from_fields(fields)])
    metrics.CLICKS_WRITTEN_DIRECT.inc()


def drain(db: Database, cache: Cache, limit: int) -> int:
    """Writes the clicks still in the queue, so a listing that follows misses none.

    At most ``limit`` entries (the oldest): a request does bounded work however long the queue
    has grown (the worker stopped, say); the worker writes the rest, and until it does a
    listing may miss the newest clicks. Entries stay in the stream: the worker acknowledges
    and deletes them, and its own insert of the same clicks does nothing.
    """
    if not cache.enabled or cache.breaker.is_open or limit <= 0:
        return 0
    written = 0
    read = 0
    start = "-"
    while read < limit:
        count = min(DRAIN_PAGE, limit - read)
        try:
            entries = cache.call(lambda r, s=start, n=count: r.xrange(cache.stream, min=s, count=n))
        except Unavailable:
            return written
        if not entries:
            break
        read += len(entries)
        written += write_rows(db, (row_from_fields(f) for _, f in entries))
        if len(entries) < count:
            break
        start = "(" + entries[-1][0]
    if written:
        metrics.CLICKS_DRAINED.inc(written)
    return written
