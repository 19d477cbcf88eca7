"""PostgreSQL access: a bounded, thread-safe connection pool that is safe behind PgBouncer.

PgBouncer runs in transaction pooling mode, so nothing here relies on session state: no
session SET, no session advisory locks, no server-side prepared statements (psycopg2 sends
none). Connections are in autocommit mode, so a single read costs one round trip; writes
that need several statements use ``transaction()``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from app import metrics

log = logging.getLogger(__name__)

# Errors that mean "the database cannot be reached", as opposed to a bad statement.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def _looks_alive(conn: psycopg2.extensions.connection) -> bool:
    """An idle connection has nothing to read; a readable one was closed by the other side
    (PgBouncer or PostgreSQL restarted). One poll, no round trip."""
    if conn.closed:
        return False
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class DatabaseUnavailable(Exception):
    """The database cannot be reached, or no pooled connection was free in time."""


class Database:
    """A bounded pool: at most ``maxconn`` connections, callers wait up to ``wait_timeout``.

    psycopg2's own pools close every returned connection above ``minconn`` and raise at once
    when empty; this one keeps idle connections (newest first, so the rest can age out in
    PgBouncer) and makes callers wait for a free one instead.
    """

    def __init__(
        self,
        dsn: str,
        maxconn: int,
        wait_timeout: float,
        connect_options: Mapping[str, int],
    ) -> None:
        self._dsn = dsn
        self._maxconn = maxconn
        self._wait_timeout = wait_timeout
        # connect_timeout and the dead-peer options (Settings.db_connect_options)
        self._connect_options = dict(connect_options)
        self._lock = threading.Lock()
        self._idle: list[psycopg2.extensions.connection] = []
        self._slots = threading.BoundedSemaphore(maxconn)
        self._pid = os.getpid()
        self._in_use = 0

    def _check_fork(self) -> None:
        # Gunicorn preloads the app in its master: a connection must never be shared between
        # processes, so a forked child starts with an empty pool of its own.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._idle = []
                    self._slots = threading.BoundedSemaphore(self._maxconn)
                    self._in_use = 0
                    self._pid = os.getpid()

    def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self._dsn, application_name="shortener", **self._connect_options)
        conn.autocommit = True
        return conn

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def max_size(self) -> int:
        return self._maxconn

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        self._check_fork()
        slots = self._slots
        started = time.perf_counter()
        if not slots.acquire(timeout=self._wait_timeout):
            metrics.DB_POOL_TIMEOUTS.inc()
            raise DatabaseUnavailable("no database connection free in time")
        metrics.DB_POOL_WAIT.observe(time.perf_counter() - started)
        self._in_use += 1
        metrics.DB_POOL_IN_USE.inc()
        conn: psycopg2.extensions.connection | None = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None and not _looks_alive(conn):
                conn.close()
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
            except CONNECTION_ERRORS as exc:
                conn = None
                raise DatabaseUnavailable(str(exc).strip() or "database unreachable") from exc
            try:
                yield conn
            except CONNECTION_ERRORS as exc:
                conn.close()
                raise DatabaseUnavailable(str(exc).strip() or "database connection lost") from exc
            except BaseException:
                if not conn.closed and conn.status != psycopg2.extensions.STATUS_READY:
                    conn.rollback()
                raise
        finally:
            if conn is not None and not conn.closed:
                with self._lock:
                    self._idle.append(conn)
            self._in_use -= 1
            metrics.DB_POOL_IN_USE.dec()
            slots.release()

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self.connection() as conn:
            conn.autocommit = False
            try:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
            finally:
                if not conn.closed:
                    conn.autocommit = True

    def fetch_one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        with self.connection() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return dict(row) if row is not None else None

    def fetch_all(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.connection() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]

    def execute(self, sql: str, params: Any = None) -> int:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def ping(self) -> None:
        self.fetch_one("SELECT 1 AS ok")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
