"""Per-client rate limits of the keys profile (flask-limiter on the Redis the service uses).

One limit per request, chosen by who calls and what they do (the settings hold the numbers):

- an admin key: ``rate_limit_admin``, one budget for everything (automation creates hundreds
  of links a second);
- link creation (POST /urls, the web form): ``rate_limit_create`` for a user's key,
  ``rate_limit_anonymous_create`` (the tightest) without a key;
- other writes: ``rate_limit_write``; reads: ``rate_limit_read``.

Counted per API key (its id) or, without one, per client address (app/addresses.py), in
fixed windows, one counter per (client, kind of limit). The redirect, /health and /metrics are
never limited. Redis keys start with ``shortener:limits``.

Every hit makes sure its counter expires (app/limit_counter.lua instead of the library's own
script): a counter without an expiry would refuse its client for good.

When Redis fails, flask-limiter counts in each process's memory instead (the limits then hold
per worker, so a little looser) and tries Redis again with a growing back-off; any other
storage error lets the request through. Failing open is deliberate: the limits protect the
service from abuse, and an outage of the cache must not turn into an outage of the API
(docs/architecture.md, "Access").
"""

from __future__ import annotations

import logging
import math
import time
from importlib import resources

from flask import Flask, Response, request
from flask_limiter import Limit, Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded
from limits.storage import RedisStorage

from app import access, metrics
from app.config import Settings
from app.errors import error_response

log = logging.getLogger(__name__)

KEY_PREFIX = "shortener:limits"
NEVER_LIMITED = frozenset({"redirect.follow", "health.health", "metrics.metrics_endpoint", "static"})
CREATION = frozenset({"urls.create_url", "web.shorten"})
# The storage scheme of ExpiringRedisStorage: this prefix before the Redis URL's own scheme.
SCHEME_PREFIX = "shortener-"


class ExpiringRedisStorage(RedisStorage):
    """limits' Redis storage whose fixed-window hit gives an expiry to every counter that has
    none, not only to a new one (app/limit_counter.lua says why). Registered with limits under
    ``shortener-redis://`` and ``shortener-rediss://`` (its storage registry is how limits
    lets an application bring a storage of its own)."""

    STORAGE_SCHEME = [f"{SCHEME_PREFIX}redis", f"{SCHEME_PREFIX}rediss"]
    SCRIPT_INCR_EXPIRE = (resources.files("app") / "limit_counter.lua").read_text(encoding="utf-8")

    def __init__(self, uri: str, **options: float | str | bool) -> None:
        super().__init__(uri.removeprefix(SCHEME_PREFIX), **options)


def _kind() -> str:
    """Which limit applies to this request; also the counter's scope."""
    caller = access.current()
    if caller.kind == "admin":
        return "admin"
    if request.endpoint in CREATION and request.method == "POST":
        return "create" if caller.kind == "user" else "anonymous_create"
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"


def _client() -> str:
    caller = access.current()
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return f"addr:{access.address()}"


def _exempt() -> bool:
    return request.endpoint in NEVER_LIMITED or request.endpoint is None


def _on_breach(limit: RequestLimit) -> None:
    caller = access.current()
    scope = caller.kind if caller.kind in ("admin", "user") else "anonymous"
    # The key's prefix names the client; an address never becomes a label (unbounded).
    metrics.rate_limited(scope, caller.prefix or "", _kind())


def init(app: Flask, settings: Settings) -> Limiter | None:
    """Installs the limits on ``app`` in the keys profile; the open profile has none."""
    if settings.access_profile != "keys":
        return None

    by_kind = {
        "admin": settings.rate_limit_admin,
        "create": settings.rate_limit_create,
        "anonymous_create": settings.rate_limit_anonymous_create,
        "write": settings.rate_limit_write,
        "read": settings.rate_limit_read,
    }
    options: dict[str, str | int | float] = {}
    if settings.redis_url:
        storage_uri = SCHEME_PREFIX + settings.redis_url
        options = {
            "key_prefix": KEY_PREFIX,
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": settings.redis_connect_timeout,
        }
    else:
        storage_uri = "memory://"
    limiter = Limiter(
        key_func=_client,
        default_limits=[
            Limit(
                limit_provider=lambda: by_kind[_kind()],
                key_function=_client,
                scope=lambda _endpoint: _kind(),
                shared=True,
                on_breach=_on_breach,
            )
        ],
        storage_uri=storage_uri,
        storage_options=options,  # type: ignore[arg-type]
        strategy="fixed-window",
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        headers_enabled=False,  # the headers would cost a Redis round trip per request
    )
    limiter.init_app(app)
    # Not only exempt from the limits: never in the limiter at all. Once its storage failed,
    # flask-limiter checks it again (with a growing back-off) inside whichever request comes,
    # the redirect included, which then waits on a hung Redis.
    limiter.request_filter(_exempt)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        response = error_response(429, "Too many requests: slow down and retry later", {"limit": str(exc.limit.limit)})
        response.headers["Retry-After"] = str(_retry_after(limiter, exc))
        return response

    return limiter


def _retry_after(limiter: Limiter, exc: RateLimitExceeded) -> int:
    """Seconds until the breached window ends; its whole length if storage cannot say."""
    current = limiter.current_limit
    try:
        if current is not None:
            return max(1, math.ceil(current.window.reset_time - time.time()))
    except Exception:
        log.warning("rate limit window unknown", exc_info=True)
    return max(1, exc.limit.limit.get_expiry())
