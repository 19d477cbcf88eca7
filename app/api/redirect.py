"""GET /<short_code>: the hot path. One Redis round trip on a cache hit, click included."""

from __future__ import annotations

import calendar
import contextlib
import logging
import re

from flask import Blueprint, Response, g, request

from app import access, clicks, metrics, sql
from app.cache import NEGATIVE, TOMBSTONE, CachedLink, Unavailable
from app.errors import ApiError
from app.services import services

log = logging.getLogger(__name__)

bp = Blueprint("redirect", __name__)

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _redirect(link: CachedLink) -> Response:
    response = Response(status=link.status)
    response.headers["Location"] = link.original_url
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/<short_code>", methods=["GET", "HEAD"])
def follow(short_code: str) -> Response:
    if not _CODE.match(short_code):
        raise ApiError(404, "Short link not found")
    svc = services()
    cache = svc.cache
    # HEAD (link previews, monitors) answers like GET but is not a click.
    counted = request.method == "GET"
    click = None
    if counted:
        click = clicks.new_click(
            request.referrer,
            request.user_agent.string,
            g.get("request_id", ""),
            request.headers.get(clicks.CLICK_ID_HEADER),
            access.address(),
        )

    cached: str | None = None
    cache_up = False
    if cache.enabled:
        try:
            cached = cache.lookup_and_click(short_code, click) if click is not None else cache.peek(short_code)
            cache_up = True
        except Unavailable:
            metrics.cache_requests("bypass").inc()
    if cached == NEGATIVE:
        metrics.cache_requests("negative_hit").inc()
        raise ApiError(404, "Short link not found")
    if cached and cached != TOMBSTONE:
        link = CachedLink.decode(cached)
        # A GET's value came through the script, which already decided the options; a HEAD
        # peeked at the raw entry, so a link with options is decided below.
        if click is not None or (link.expires is None and link.max_clicks is None):
            metrics.cache_requests("hit").inc()
            if click is not None:
                metrics.CLICKS_QUEUED.inc()
            return _redirect(link)
    elif cache_up:
        metrics.cache_requests("miss").inc()

    row = svc.db.fetch_one(sql.RESOLVE_CODE, (short_code,))
    link = None
    if row is not None and row["is_active"] and not row["expired"]:
        expires = calendar.timegm(row["expires_at"].utctimetuple()) if row["expires_at"] else None
        link = CachedLink(
            row["id"], row["user_id"], row["redirect_type"], row["original_url"], expires, row["max_clicks"]
        )
    if cache_up:
        with contextlib.suppress(Unavailable):
            cache.fill(short_code, link, lambda: _stored_clicks(row["id"]))
    if link is None:
        raise ApiError(404, "Short link not found")
    if link.max_clicks is not None:
        return _capped(link, link.max_clicks, short_code, click, cache_up)
    if click is not None:
        _record(click, link, short_code)
    return _redirect(link)


def _stored_clicks(url_id: int) -> int:
    return int(services().db.fetch_one(sql.COUNT_CLICKS, (url_id,))["n"])


def _capped(link: CachedLink, max_clicks: int, code: str, click: clicks.Click | None, cache_up: bool) -> Response:
    """A link with max_clicks, not answered from the cache: the script counts (atomically)
    once the entry is filled; without Redis, or for HEAD, the stored clicks decide (not
    atomic: docs/analytics.md)."""
    svc = services()
    if click is not None and cache_up:
        with contextlib.suppress(Unavailable):
            value = svc.cache.lookup_and_click(code, click)
            if value == NEGATIVE:
                raise ApiError(404, "Short link not found")
            if value and value != TOMBSTONE:
                metrics.CLICKS_QUEUED.inc()
                return _redirect(link)
    if _stored_clicks(link.url_id) >= max_clicks:
        raise ApiError(404, "Short link not found")
    if click is not None:
        _record(click, link, code)
    return _redirect(link)


def _record(click: clicks.Click, link: CachedLink, code: str) -> None:
    """A click missed by the cache script: queue it, or write it at once if Redis is out."""
    svc = services()
    fields = click.fields(link.url_id, link.user_id, code)
    if svc.cache.enabled:
        try:
            svc.cache.call(lambda r: r.xadd(svc.cache.stream, fields))
            metrics.CLICKS_QUEUED.inc()
            return
        except Unavailable:
            pass
    clicks.write_direct(svc.db, svc.settings.clicks_keep_addresses, click, link.url_id, link.user_id, code)
