"""The click worker: moves clicks from the Redis stream into PostgreSQL, in batches.

Run as its own process: ``python -m app.clickworker``. Several may run at once.

Delivery is at least once and the write is idempotent (see clicks.py), so nothing is lost and
nothing is counted twice:
- a batch is acknowledged (XACK) and deleted from the stream only after its insert committed;
- a worker killed mid-batch leaves its entries pending in the consumer group; the next worker
  to start (or any worker, once they have been idle for ``clickworker_claim_idle_ms``) claims
  them and writes them again, which inserts only the clicks that were missing;
- when PostgreSQL is down the entries stay in Redis and the worker retries with back-off;
- when Redis is down the worker waits for it; redirects meanwhile write their clicks directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType

import psycopg2
import redis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.exceptions import RedisError, ResponseError

from app import cache, clickparse, clicks, clickstore
from app.config import Settings, get_settings
from app.db import Database, DatabaseUnavailable
from app.logs import configure_logging

log = logging.getLogger("shortener.clickworker")

GROUP = "writers"

WRITTEN = Counter("shortener_clickworker_clicks_written_total", "Clicks inserted into PostgreSQL.")
BATCHES = Histogram(
    "shortener_clickworker_batch_seconds",
    "Time to write one batch of clicks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FAILURES = Counter("shortener_clickworker_failures_total", "Batches that could not be written, by cause.", ["cause"])
BACKLOG = Gauge("shortener_clickworker_backlog", "Clicks in the stream, not yet written.")
PENDING = Gauge("shortener_clickworker_pending", "Clicks delivered to a worker but not acknowledged.")
MAINTAINED = Gauge(
    "shortener_clickworker_maintenance_timestamp_seconds",
    "When the worker last made the click partitions ahead and applied the retention.",
)
LAST_SUCCESS = Gauge("shortener_clickworker_last_success_timestamp_seconds", "When the worker last completed a loop.")


class ClickWorker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: redis.Redis,
        name: str,
        stopping: threading.Event | None = None,
        primary: bool = True,
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = client
        self.stream = settings.click_stream
        self.name = name
        self.stopping = stopping or threading.Event()
        # Of several workers in one process (clickworker_threads) one keeps the gauges and
        # runs the maintenance; the others only write.
        self.primary = primary
        # How often the backlog and pending gauges are read from Redis, apart from the loop.
        self.gauge_interval = 5.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _write(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        """Writes then acknowledges; raises if PostgreSQL fails (entries stay pending)."""
        if not entries:
            return 0
        started = time.perf_counter()
        rows = []
        for _, fields in entries:
            try:
                rows.append(clicks.row_from_fields(fields))
            except (KeyError, ValueError):
                # Not a click we wrote: keep it out of the table, but say so.
                log.error("dropping malformed stream entry", extra={"fields": fields})
        keep = self.settings.clicks_keep_addresses
        try:
            new = self._store(rows)
        except (psycopg2.DataError, ValueError):
            # One click PostgreSQL refuses must not block the queue forever: write them one by
            # one and drop (with a log line) only the refused ones.
            new = 0
            for row in rows:
                try:
                    new += clickstore.write(self.db, [row], keep)
                except (psycopg2.DataError, ValueError) as exc:
                    FAILURES.labels("refused").inc()
                    log.error(
                        "dropping a click the database refused",
                        extra={"row": {k: v for k, v in row.items() if k != "address"}, "error": str(exc)},
                    )
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        WRITTEN.inc(new)
        BATCHES.observe(time.perf_counter() - started)
        return len(entries)

    def _store(self, rows: list[dict]) -> int:
        """Writes rows in one statement. A batch that outlasts the statement timeout is written
        in halves: a slow database must not hold a full batch back for good, retried whole
        after every back-off (the writes are idempotent, a half that committed is not doubled)."""
        try:
            return clickstore.write(self.db, rows, self.settings.clicks_keep_addresses)
        except DatabaseUnavailable as exc:
            if len(rows) < 2 or not isinstance(exc.__cause__, psycopg2.errors.QueryCanceled):
                raise
            FAILURES.labels("timeout").inc()
            log.warning("a batch outlasted the statement timeout, written in halves", extra={"rows": len(rows)})
            half = len(rows) // 2
            return self._store(rows[:half]) + self._store(rows[half:])

    def claim_stale(self) -> int:
        """Takes over entries left pending by a worker that died."""
        done = 0
        start = "0-0"
        while True:
            result = self.redis.xautoclaim(
                self.stream,
                GROUP,
                self.name,
                self.settings.clickworker_claim_idle_ms,
                start_id=start,
                count=self.settings.clickworker_batch_size,
            )
            start, claimed = result[0], result[1]
            done += self._write([(i, f) for i, f in claimed if f])
            if start in ("0-0", b"0-0"):
                return done

    def own_pending(self) -> int:
        """Entries delivered to this consumer name before, not acknowledged (a restart)."""
        done = 0
        while True:
            reply = self.redis.xreadgroup(
                GROUP, self.name, {self.stream: "0"}, count=self.settings.clickworker_batch_size
            )
            batch = reply[0][1] if reply else []
            if not batch:
                return done
            # An entry deleted from the stream but still pending comes back without fields.
            gone = [i for i, f in batch if not f]
            if gone:
                self.redis.xack(self.stream, GROUP, *gone)
            done += self._write([(i, f) for i, f in batch if f])

    def step(self) -> int:
        reply = self.redis.xreadgroup(
            GROUP,
            self.name,
            {self.stream: ">"},
            count=self.settings.clickworker_batch_size,
            block=self.settings.clickworker_block_ms,
        )
        entries = reply[0][1] if reply else []
        return self._write(entries)

    def maintain(self) -> None:
        """Partitions ahead, retention, visitor keys (app/clickstore.py); cheap, idempotent."""
        result = clickstore.maintain(self.db, self.settings)
        MAINTAINED.set(time.time())
        log.debug("click tables maintained", extra=result)

    def update_gauges(self, written: bool = True) -> None:
        BACKLOG.set(self.redis.xlen(self.stream))
        try:
            PENDING.set(self.redis.xpending(self.stream, GROUP)["pending"])
        except ResponseError:
            PENDING.set(0)
        if written:
            LAST_SUCCESS.set(time.time())

    def _watch_queue(self) -> None:
        # Its own thread: an insert can hang for minutes (PgBouncer holds a query while
        # PostgreSQL is away, query_wait_timeout), and that is when the backlog matters.
        while not self.stopping.wait(self.gauge_interval):
            with contextlib.suppress(RedisError):
                self.update_gauges(written=False)

    def run(self) -> None:
        if self.primary:
            threading.Thread(target=self._watch_queue, name="queue-gauges", daemon=True).start()
        delay = 0.5
        recovered = False
        last_claim = 0.0
        last_maintenance = 0.0
        settings = self.settings
        while not self.stopping.is_set():
            try:
                due = not last_maintenance or time.monotonic() - last_maintenance > settings.clicks_maintenance_seconds
                if self.primary and due:
                    self.maintain()
                    last_maintenance = time.monotonic()
                if not recovered:
                    self.ensure_group()
                    self.own_pending()
                    recovered = True
                if time.monotonic() - last_claim > self.settings.clickworker_claim_idle_ms / 2000:
                    self.claim_stale()
                    last_claim = time.monotonic()
                written = self.step()
                self.update_gauges()
                delay = 0.5
                if 0 < written < self.settings.clickworker_batch_size:
                    # A partial batch: let the next one fill up. Under load each batch (seven
                    # round trips and a commit) otherwise carries ~20 clicks (docs/capacity.md,
                    # fix 8); a lone click still goes out at once, it only delays the next read.
                    self.stopping.wait(self.settings.clickworker_linger_ms / 1000)
            except DatabaseUnavailable as exc:
                FAILURES.labels("database").inc()
                # The backlog gauge stays true meanwhile: _watch_queue updates it on its own.
                log.warning("database unavailable, clicks wait in Redis", extra={"error": str(exc)})
                recovered = False
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
            except RedisError as exc:
                FAILURES.labels("redis").inc()
                log.warning("redis unavailable", extra={"error": str(exc)})
                recovered = False
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)


def stream_client(settings: Settings) -> redis.Redis:
    """The worker's Redis client: its reads block up to clickworker_block_ms, so its socket
    timeout is longer; text decoded as the service's own client does (cache.DECODE_ERRORS)."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=max(settings.redis_socket_timeout, settings.clickworker_block_ms / 1000 + 2),
        socket_connect_timeout=settings.redis_connect_timeout,
        decode_responses=True,
        encoding_errors=cache.DECODE_ERRORS,
    )


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.redis_url:
        log.error("SHORTENER_REDIS_URL is empty: without Redis, redirects write clicks themselves")
        return 2
    host, _, port = settings.clickworker_metrics_addr.rpartition(":")
    if port:
        start_http_server(int(port), addr=host or "127.0.0.1")
    threads = settings.clickworker_threads
    db = Database(settings.database_url, threads + 1, 10.0, settings.db_connect_options)
    client = stream_client(settings)
    # A stable name per host and unit lets a restarted worker find its own pending entries
    # at once; claim_stale covers the rest.
    name = os.environ.get("SHORTENER_CLICKWORKER_NAME") or f"{socket.gethostname()}-clickworker"
    # Several consumers in one process: while one waits for PostgreSQL another parses its batch
    # (docs/analytics.md, "Ingestion"). Each has its own stable name.
    stopping = threading.Event()
    workers = [
        ClickWorker(settings, db, client, name if i == 0 else f"{name}-{i + 1}", stopping, primary=i == 0)
        for i in range(threads)
    ]
    clickparse.warm_up()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping after the current batch", extra={"signal": signum})
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("click worker started", extra={"consumer": name, "threads": threads, "stream": settings.click_stream})
    run_all(workers)
    db.close()
    return 0


def run_all(workers: list[ClickWorker]) -> None:
    """Runs the workers in threads of this one (which runs the first) until they stop."""
    others = [threading.Thread(target=w.run, name=f"clickworker-{i + 2}") for i, w in enumerate(workers[1:])]
    for thread in others:
        thread.start()
    workers[0].run()
    for thread in others:
        thread.join()


if __name__ == "__main__":
    sys.exit(main())
