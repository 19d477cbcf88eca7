"""Redis: the redirect cache and the click queue, behind a circuit breaker.

A link is cached as one string ``url_id \\t user_id \\t status \\t original_url`` under
``shortener:url:<code>``. Two other values mark a key: ``-`` (the code is unknown or inactive:
negative cache, short TTL) and ``!`` (a tombstone: the link just changed, do not fill the cache
for a few seconds). The tombstone closes the cache-aside race where a reader that loaded the
old row from PostgreSQL writes it back after the writer invalidated it.

A redirect that hits the cache costs ONE Redis round trip: a Lua script reads the key and, on
a hit, appends the click to the stream in the same call.

Every call has a short socket timeout. After a few consecutive failures the breaker opens and
the service stops calling Redis for a while, so no request waits on a dead Redis; after the
pause one call probes it. When the breaker closes again, the invalidations this process could
not make while Redis was unreachable are made then (tombstones), before anything reads the
cache; only when there were too many to keep is the whole link cache emptied. Not the whole
cache every time: a worker that saw Redis fail once and then had no Redis call for minutes
probes long after Redis is back, and emptying the cache then (once during a database outage)
took every cached redirect down with it (make chaos, 08-pgbouncer-stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from app import metrics

if TYPE_CHECKING:
    from app.clicks import Click

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "shortener:url:"
# Invalidations a process keeps while Redis is unreachable; past this it empties the whole link
# cache when Redis is back instead.
LOST_INVALIDATIONS_MAX = 10_000
NEGATIVE = "-"
# How every client of ours decodes what Redis returns. The click stream carries visitors'
# header text: one entry that is not UTF-8 (written by anything but app/redirect_hit.lua's
# callers, which send UTF-8) must cost that entry a replacement character, not fail every read
# of the stream: the worker would stop at it for good, and GET /events with it.
DECODE_ERRORS = "replace"
TOMBSTONE = "!"

# Reads a link and, on a hit, queues its click: the one script the Nginx edge runs as well.
_HIT_SCRIPT = (resources.files("app") / "redirect_hit.lua").read_text(encoding="utf-8")

# KEYS[1] link key. ARGV: value, ttl. Fills unless a tombstone is there.
_FILL_SCRIPT = """
if redis.call('GET', KEYS[1]) == '!' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class CachedLink:
    url_id: int
    user_id: int | None
    status: int
    original_url: str
    # Link options, decided by app/redirect_hit.lua: the expiry as Unix seconds, the click cap.
    expires: int | None = None
    max_clicks: int | None = None

    def encode(self) -> str:
        """``id[;expires;max] \t user_id \t status \t url``: the options ride on the id, and the
        script hands callers (the edge included) the plain four fields."""
        uid = "" if self.user_id is None else str(self.user_id)
        options = ""
        if self.expires is not None or self.max_clicks is not None:
            options = f";{'' if self.expires is None else self.expires};{self.max_clicks or ''}"
        return f"{self.url_id}{options}\t{uid}\t{self.status}\t{self.original_url}"

    @classmethod
    def decode(cls, value: str) -> CachedLink:
        url_id, user_id, status, original_url = value.split("\t", 3)
        url_id, _, options = url_id.partition(";")
        expires, _, max_clicks = options.partition(";")
        return cls(
            int(url_id),
            int(user_id) if user_id else None,
            int(status),
            original_url,
            int(expires) if expires else None,
            int(max_clicks) if max_clicks else None,
        )


def counter_key(code: str) -> str:
    """Where the script counts a capped link's clicks: under the link's key ('#' is never in a
    code), so the edge's Redis user reaches it; kept when the link cache is flushed."""
    return f"{KEY_PREFIX}{code}#n"


class Unavailable(Exception):
    """Redis is not configured, or the breaker is open, or the call failed."""


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one probe through after ``reset``."""

    def __init__(self, threshold: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_seconds:
                return False
            self._probing = True
            return True

    def success(self) -> bool:
        """Records a success; True when this closed an open breaker."""
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._probing = False
            return was_open

    def failure(self) -> bool:
        """Records a failure; True when this opened the breaker."""
        with self._lock:
            self._failures += 1
            if self._opened_at is not None:
                # A failed probe: stay open for another pause.
                self._opened_at = self._clock()
                self._probing = False
                return False
            if self._failures >= self.threshold:
                self._opened_at = self._clock()
                return True
            return False


class Cache:
    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float,
        connect_timeout: float,
        breaker: CircuitBreaker,
        ttl: int,
        negative_ttl: int,
        tombstone_ttl: int,
        stream: str,
    ) -> None:
        self.enabled = bool(url)
        self.breaker = breaker
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.tombstone_ttl = tombstone_ttl
        self.stream = stream
        self.client: redis.Redis | None = None
        self._lost: set[str] = set()  # codes whose invalidation failed, made again on recovery
        self._lost_overflow = False
        self._lost_lock = threading.Lock()
        if self.enabled:
            self.client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                decode_responses=True,
                encoding_errors=DECODE_ERRORS,
                health_check_interval=0,
                # redis-py retries a failed call three times by default: that would multiply
                # every timeout before the breaker could even count a failure.
                retry=Retry(NoBackoff(), 0),
            )
            self._hit = self.client.register_script(_HIT_SCRIPT)
            self._fill = self.client.register_script(_FILL_SCRIPT)

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        return "degraded" if self.breaker.is_open else "ok"

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """Runs one Redis operation through the breaker; raises Unavailable on any failure."""
        if self.client is None:
            raise Unavailable("redis is not configured")
        if not self.breaker.allow():
            raise Unavailable("redis circuit breaker is open")
        # allow() let this call through an open breaker: it is the probe. Make the
        # invalidations lost during the outage before anything reads the cache.
        probing = self.breaker.is_open
        try:
            if probing:
                self.client.ping()
                self._replay_lost()
            result = fn(self.client)
        except RedisError as exc:
            if self.breaker.failure():
                log.warning("redis unavailable, circuit breaker opened", extra={"error": str(exc)})
            metrics.DEPENDENCY_UP.labels("cache").set(0)
            raise Unavailable(str(exc)) from exc
        if self.breaker.success():
            log.warning("redis is back, circuit breaker closed; lost invalidations made again")
            metrics.DEPENDENCY_UP.labels("cache").set(1)
        return result

    def _replay_lost(self) -> None:
        assert self.client is not None
        with self._lost_lock:
            codes, overflow = set(self._lost), self._lost_overflow
        if overflow:
            self._flush_links()
        elif codes:
            with self.client.pipeline(transaction=False) as pipe:
                for code in codes:
                    pipe.set(KEY_PREFIX + code, TOMBSTONE, ex=self.tombstone_ttl)
                pipe.execute()
        with self._lost_lock:  # only once they are made: a failed probe keeps them
            self._lost -= codes
            self._lost_overflow = self._lost_overflow and not overflow

    def _flush_links(self) -> None:
        assert self.client is not None
        batch: list[str] = []
        for key in self.client.scan_iter(match=KEY_PREFIX + "*", count=1000):
            if key.endswith("#n"):
                continue  # a click counter is not a cached copy of anything
            batch.append(key)
            if len(batch) >= 1000:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def ping(self) -> bool:
        try:
            return bool(self.call(lambda r: r.ping()))
        except Unavailable:
            return False

    # --- redirect path -----------------------------------------------------------------
    def lookup_and_click(self, code: str, click: Click) -> str | None:
        """Reads a link; on a hit also queues the click. Returns the raw value or None."""
        key = KEY_PREFIX + code
        args = click.script_args(code)
        return self.call(lambda r: self._hit_once(r, key, args))

    def _hit_once(self, r: redis.Redis, key: str, args: list[str]) -> str | None:
        # EVALSHA straight away: redis-py's Script and evalsha() wrappers (argument checks,
        # a deprecation shim) cost about 6% of a worker's CPU per redirect (py-spy,
        # docs/capacity.md, fix 9).
        try:
            return r.execute_command("EVALSHA", self._hit.sha, 2, key, self.stream, *args)
        except NoScriptError:
            # Redis restarted empty or its scripts were flushed: Script loads it and retries.
            return self._hit(keys=[key, self.stream], args=args, client=r)

    def peek(self, code: str) -> str | None:
        """Reads a link without counting a click (HEAD requests)."""
        return self.call(lambda r: r.get(KEY_PREFIX + code))

    def fill(self, code: str, link: CachedLink | None, counted: Callable[[], int] | None = None) -> None:
        """Caches a link (None: the negative entry). A capped link's counter starts at
        ``counted()`` (the stored clicks) when Redis has none, e.g. after losing its data."""
        key = KEY_PREFIX + code
        capped = link is not None and link.max_clicks is not None and counted is not None
        if capped and not self.call(lambda r: r.exists(counter_key(code))):
            start = counted()  # type: ignore[misc]
            self.call(lambda r: r.set(counter_key(code), start, nx=True))
        if link is None:
            self.call(lambda r: self._fill(keys=[key], args=[NEGATIVE, self.negative_ttl], client=r))
        else:
            self.call(lambda r: self._fill(keys=[key], args=[link.encode(), self.ttl], client=r))

    def invalidate(self, code: str) -> None:
        """Called after the change is committed: every instance sees it on its next read."""
        key = KEY_PREFIX + code
        try:
            self.call(lambda r: r.set(key, TOMBSTONE, ex=self.tombstone_ttl))
        except Unavailable:
            with self._lost_lock:
                if len(self._lost) < LOST_INVALIDATIONS_MAX:
                    self._lost.add(code)
                else:
                    self._lost_overflow = True
            raise
