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
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import clickstore, metrics, sql
from app.cache import Cache, Unavailable
from app.db import Database

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 512
DRAIN_PAGE = 1000

# The click stream's field names, the ONE place Python spells them (short names keep the
# stream small). The Redis script app/redirect_hit.lua writes a hit's click with the same
# names; tests/test_edge.py checks that both agree.
F_CLICK_ID = "c"
F_URL_ID = "u"
F_OWNER = "o"
F_TIME = "t"
F_REFERRER = "r"
F_USER_AGENT = "a"
F_CODE = "s"
F_REQUEST_ID = "q"
# The client's address: only in the stream (Redis), which the worker empties; the worker turns
# it into a visitor id and stores it only when SHORTENER_CLICKS_KEEP_ADDRESSES says so.
F_ADDRESS = "i"

# A click id made by the Nginx edge (24 hex digits) and handed on with a request it could not
# finish: the instance queues the click under the same id, so a click the edge may already
# have queued (Redis answered too late) is stored once.
CLICK_ID_HEADER = "X-Shortener-Click-Id"
_CLICK_ID = re.compile(r"^[0-9a-f]{24}$")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f]+")


@dataclass(frozen=True)
class Click:
    """One redirect's click, before the link it belongs to is known."""

    click_id: str
    ts: str
    referrer: str
    user_agent: str
    request_id: str = ""
    address: str = ""

    def script_args(self, code: str) -> list[str]:
        """ARGV of app/redirect_hit.lua, in its order."""
        return [self.click_id, self.ts, self.referrer, self.user_agent, code, self.request_id, self.address]

    def fields(self, url_id: int, user_id: int | None, code: str) -> dict[str, str]:
        """The stream entry, as the script would have queued it on a hit."""
        return {
            F_CLICK_ID: self.click_id,
            F_URL_ID: str(url_id),
            F_OWNER: "" if user_id is None else str(user_id),
            F_TIME: self.ts,
            F_REFERRER: self.referrer,
            F_USER_AGENT: self.user_agent,
            F_CODE: code,
            F_REQUEST_ID: self.request_id,
            F_ADDRESS: self.address,
        }


def _clip(value: str) -> str:
    """NUL and other C0 controls but the tab dropped (PostgreSQL refuses NUL in text), lone
    surrogates replaced, at most MAX_HEADER_CHARS characters. Applied again to what the stream
    holds: the edge queues headers as sent, only made valid UTF-8. On every click the worker
    writes, hence a regular expression and an ASCII shortcut rather than a loop per character
    (a quarter of the cost, docs/capacity.md, "Ingestion")."""
    value = _CONTROLS.sub("", value)
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:MAX_HEADER_CHARS]


def header_text(value: str | None) -> str:
    """A request header as stored text: WSGI hands headers over decoded as latin-1, so bytes
    that were UTF-8 are decoded again; bytes that are not UTF-8 stay latin-1 characters."""
    if not value:
        return ""
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("latin-1").decode("utf-8")
    return _clip(value)


def new_click(
    referrer: str | None,
    user_agent: str | None,
    request_id: str = "",
    click_id: str | None = None,
    address: str | None = None,
) -> Click:
    """The click of a redirect; ``click_id`` is the edge's (CLICK_ID_HEADER) when it sent one."""
    return Click(
        click_id=click_id if click_id and _CLICK_ID.match(click_id) else secrets.token_hex(12),
        ts=datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        referrer=header_text(referrer),
        user_agent=header_text(user_agent),
        request_id=request_id,
        address=address or "",
    )


def row_from_fields(fields: Mapping[str, str]) -> dict[str, Any]:
    """A stream entry as the JSON record INSERT_CLICKS reads (``address`` never reaches
    ``events``; app/clickstore.py hashes it)."""
    details = {
        "short_code": fields.get(F_CODE, ""),
        "referrer": _clip(fields.get(F_REFERRER, "")) or None,
        "user_agent": _clip(fields.get(F_USER_AGENT, "")) or None,
    }
    if fields.get(F_REQUEST_ID):
        details["request_id"] = fields[F_REQUEST_ID]
    return {
        "click_id": fields[F_CLICK_ID],
        "url_id": int(fields[F_URL_ID]) if fields.get(F_URL_ID) else None,
        "user_id": int(fields[F_OWNER]) if fields.get(F_OWNER) else None,
        "ts": fields[F_TIME],
        "details": details,
        "address": fields.get(F_ADDRESS, "")[:64],
    }


def write_rows(db: Database, rows: Iterable[dict[str, Any]]) -> int:
    """Inserts clicks into ``events`` only, in one statement; returns how many were new. The
    GET /events drain: cheap, no parsing; the worker's later write of the same clicks (through
    clickstore.write) fills the statistics."""
    payload = list(rows)
    if not payload:
        return 0
    # One statement in autocommit: its own transaction, without BEGIN and COMMIT round trips.
    return db.execute(sql.INSERT_CLICKS, (json.dumps(payload),))


def write_direct(db: Database, keep_addresses: bool, click: Click, url_id: int, user_id: int | None, code: str) -> None:
    """Redis is out: the redirect writes its click, statistics included, itself."""
    clickstore.write(db, [row_from_fields(click.fields(url_id, user_id, code))], keep_addresses)
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
