"""The hot redirect in plain WSGI, in front of Flask.

A ``GET /<code>`` whose link is in the Redis cache is answered here: the same one Redis round
trip as app/api/redirect.py (the Lua script that reads the link and queues the click), the
same response, metrics and access line, without Flask's request context, routing and
response objects, which cost more CPU than everything else in such a request (profiled with
py-spy: docs/capacity.md). Every other request, and every redirect this path cannot finish
(a miss, a negative or tombstoned entry, Redis unavailable or the breaker open, HEAD), goes
to Flask. A miss has queued no click (the script adds one only on a hit); Flask's redirect
gets the cache's answer in the WSGI environ and goes on from there (PostgreSQL, cache fill,
click) without a second look-up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.urls import iri_to_uri

from app import clicks, logs, metrics
from app.addresses import client_address
from app.cache import NEGATIVE, TOMBSTONE, CachedLink, Unavailable

_PATH = re.compile(r"^/([A-Za-z0-9_-]{1,64})$")
_ENDPOINT = "/<short_code>"
# The environ key that hands a cache answer (a miss, "-" or "!") on to app/api/redirect.py.
CACHED_KEY = "shortener.cached"  # the route label Flask's instrumentation gives redirects

_CLICK_ID_ENV = "HTTP_" + clicks.CLICK_ID_HEADER.upper().replace("-", "_")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastRedirect:
    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.inner = inner
        self.services = app.extensions["shortener"]
        # One-segment paths Flask routes elsewhere (/users, /health, ...) are never codes.
        self.taken = {
            rule.rule.strip("/")
            for rule in app.url_map.iter_rules()
            if rule.endpoint != "redirect.follow" and "<" not in rule.rule and rule.rule.count("/") == 1
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return self.inner(environ, start_response)
        match = _PATH.match(environ.get("PATH_INFO", ""))
        if match is None or match.group(1) in self.taken:
            return self.inner(environ, start_response)
        cache = self.services.cache
        if not cache.enabled or cache.breaker.is_open:
            return self.inner(environ, start_response)
        started = time.perf_counter()
        code = match.group(1)
        request_id = logs.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        click = clicks.new_click(
            environ.get("HTTP_REFERER"), environ.get("HTTP_USER_AGENT"), request_id, environ.get(_CLICK_ID_ENV)
        )
        # Whatever Flask does next counts this click under the same id: if Redis ran the
        # script but answered too late, the click is stored once (app/clicks.py).
        environ[_CLICK_ID_ENV] = click.click_id
        try:
            cached = cache.lookup_and_click(code, click)
        except Unavailable:
            return self.inner(environ, start_response)
        if not cached or cached in (NEGATIVE, TOMBSTONE):
            # Flask's redirect takes this answer instead of asking Redis a second time.
            environ[CACHED_KEY] = cached
            environ["HTTP_X_REQUEST_ID"] = request_id  # Flask logs and answers the same id
            return self.inner(environ, start_response)
        link = CachedLink.decode(cached)
        metrics.cache_requests("hit").inc()
        metrics.CLICKS_QUEUED.inc()

        location = link.original_url if link.original_url.isascii() else iri_to_uri(link.original_url)
        status = link.status
        # The status line as Werkzeug writes it ("302 FOUND"), so both paths answer alike.
        start_response(
            f"{status} {HTTP_STATUS_CODES[status].upper()}",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", "0"),
                ("Location", location),
                ("Cache-Control", "private, no-store"),
                ("X-Request-ID", request_id),
            ],
        )
        elapsed = time.perf_counter() - started
        metrics.observe_request("GET", _ENDPOINT, status, elapsed)
        # The client address is worked out only for a line that will be written (behind Nginx,
        # SHORTENER_ACCESS_LOG=errors writes none for a redirect).
        if logs.wants_access_line(status):
            remote = environ.get("REMOTE_ADDR")
            client = client_address(remote, environ.get("HTTP_X_REAL_IP"), self.services.trusted_proxies)
            logs.access_line(request_id, "GET", environ.get("PATH_INFO", ""), status, elapsed, client)
        return [b""]
