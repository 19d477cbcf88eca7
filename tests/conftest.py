"""Shared fixtures: a real PostgreSQL, PgBouncer (transaction mode) and Redis for every test.

The stack is installed if missing and started once per session (devstack/). Each test
gets an empty database and an empty Redis. Apps talk to PostgreSQL through PgBouncer, as in
production.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import redis as redis_lib

from app import clickstore, create_app, keys
from app.config import Settings
from devstack import DevStack

os.environ.setdefault("SHORTENER_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    services = DevStack()
    services.start()
    yield services
    if os.environ.get("SHORTENER_TEST_KEEP_SERVICES") != "1":
        services.stop_started()


def make_settings(stack: DevStack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": stack.database_url,
        "redis_url": stack.redis_url,
        "log_level": "WARNING",
        "db_pool_max": 4,
        "db_pool_timeout": 2.0,
        "breaker_reset_seconds": 0.5,
        "public_base_url": "http://sho.rt",
        # The contract without credentials; tests of the keys profile pass access_profile="keys".
        "access_profile": "open",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def _schema(stack: DevStack) -> None:
    """Starts from an empty database once; the first app applies the migrations."""
    stack.reset_database()
    create_app(make_settings(stack)).extensions["shortener"].db.close()


def truncate(stack: DevStack) -> None:
    conn = psycopg2.connect(stack.direct_database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "TRUNCATE api_keys, events, urls, users, clicks, click_hourly, click_daily, click_dims, click_spans,"
                " click_visitors, visitor_keys, clicks_backfill, click_spans_filled RESTART IDENTITY CASCADE"
            )
    finally:
        conn.close()
    # The emptied visitor keys (and, after reset_database, partitions) must not live on in
    # this process's memory.
    clickstore.forget()


@pytest.fixture
def clean(stack: DevStack, _schema: None) -> DevStack:
    truncate(stack)
    stack.flush_redis()
    return stack


@pytest.fixture
def app_factory(clean: DevStack) -> Iterator[Callable[..., Any]]:
    apps: list[Any] = []

    def factory(**overrides: Any) -> Any:
        app = create_app(make_settings(clean, migrate_on_start=False, **overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["shortener"].db.close()


@pytest.fixture
def app(app_factory: Callable[..., Any]) -> Any:
    return app_factory()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def keyed_client(app: Any, key: str) -> Any:
    """A test client that sends ``Authorization: Bearer <key>`` with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture(params=["open", "keys+admin"])
def contract_client(request: pytest.FixtureRequest, app_factory: Callable[..., Any]) -> Any:
    """The contract holds in both profiles: without credentials in ``open``, and with an admin
    key in ``keys``. Contract test modules use this as their ``client``."""
    if request.param == "open":
        return app_factory().test_client()
    app = app_factory(access_profile="keys")
    key, _ = keys.create(app.extensions["shortener"].db, user_id=None, is_admin=True, name="contract tests")
    return keyed_client(app, key)


@pytest.fixture
def redis(clean: DevStack) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(clean.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def sql(clean: DevStack) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Runs a statement directly against PostgreSQL and returns the rows."""
    conn = psycopg2.connect(clean.direct_database_url)
    conn.autocommit = True

    def run(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    yield run
    conn.close()


@pytest.fixture
def make_user(client: Any) -> Callable[..., dict[str, Any]]:
    counter = iter(range(1, 10_000))

    def make(**fields: Any) -> dict[str, Any]:
        n = next(counter)
        body = {"username": f"user{n}", "email": f"user{n}@example.com", **fields}
        response = client.post("/users", json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return make


@pytest.fixture
def make_url(client: Any) -> Callable[..., dict[str, Any]]:
    counter = iter(range(1, 10_000))

    def make(**fields: Any) -> dict[str, Any]:
        body = {"original_url": f"https://example.com/page/{next(counter)}", **fields}
        response = client.post("/urls", json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return make


class BlackholeRedis:
    """A TCP port that accepts connections and never answers: Redis hanging, not refusing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def blackhole() -> Iterator[BlackholeRedis]:
    hole = BlackholeRedis()
    yield hole
    hole.close()
