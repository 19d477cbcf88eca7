"""The test harness itself: real PostgreSQL, PgBouncer and Redis on private ports.

These tests stop servers and empty the database, so they run against a stack of
their own (under `<base>/selftest`, on the main ports + 1), never the one the
rest of the suite or `make dev` is using.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import redis

from devstack import (
    APP_DATABASE,
    APP_USER,
    BASE_DIR_ENV,
    PG_PORT_ENV,
    PGBOUNCER_PORT_ENV,
    REDIS_PORT_ENV,
    DevStack,
    ensure_packages,
)
from devstack.cli import main

pytestmark = pytest.mark.services


def _selftest_services() -> DevStack:
    shared = DevStack()
    return DevStack(
        shared.base_dir / "selftest",
        pg_port=shared.pg_port + 1,
        pgbouncer_port=shared.pgbouncer_port + 1,
        redis_port=shared.redis_port + 1,
    )


@pytest.fixture(scope="module")
def harness() -> Iterator[DevStack]:
    ensure_packages()
    services = _selftest_services().start()
    yield services
    services.close()
    services.stop()


def _query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url, connect_timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _pgbouncer_admin(services: DevStack, command: str) -> list[dict[str, Any]]:
    # The admin console speaks only the simple protocol and knows no BEGIN.
    conn = psycopg2.connect(services.pgbouncer_admin_url, connect_timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(command)
            names = [column.name for column in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def test_query_through_pgbouncer(harness: DevStack) -> None:
    assert f":{harness.pgbouncer_port}/" in harness.database_url
    rows = _query(
        harness.database_url,
        "SELECT current_user, current_database(), inet_server_port(), version()",
    )
    user, database, server_port, version = rows[0]
    assert (user, database) == (APP_USER, APP_DATABASE)
    # The server side of the connection is PostgreSQL's own port.
    assert server_port == harness.pg_port
    assert version.startswith("PostgreSQL")


def test_direct_and_admin_urls(harness: DevStack) -> None:
    assert _query(harness.direct_database_url, "SELECT current_user, inet_server_port()") == [
        (APP_USER, harness.pg_port)
    ]
    assert _query(harness.direct_database_url, "SHOW is_superuser") == [("off",)]
    assert _query(harness.admin_database_url, "SHOW is_superuser") == [("on",)]
    assert _query(harness.admin_database_url, "SELECT current_database()") == [(APP_DATABASE,)]


def test_fast_test_settings(harness: DevStack) -> None:
    for name, expected in [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("password_encryption", "scram-sha-256"),
        ("listen_addresses", "127.0.0.1"),
    ]:
        assert _query(harness.admin_database_url, f"SHOW {name}") == [(expected,)], name


def test_app_role_can_create_tables(harness: DevStack) -> None:
    conn = psycopg2.connect(harness.database_url, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS harness_probe (id bigserial PRIMARY KEY)")
            cur.execute("INSERT INTO harness_probe DEFAULT VALUES RETURNING id")
            assert cur.fetchone() is not None
    finally:
        conn.close()
    harness.reset_database()


@pytest.mark.parametrize("which", ["database_url", "direct_database_url"])
def test_postgres_rejects_wrong_password(harness: DevStack, which: str) -> None:
    url = getattr(harness, which).replace(harness.passwords[APP_USER], "wrong-password")
    with pytest.raises(psycopg2.OperationalError, match="authentication failed"):
        psycopg2.connect(url, connect_timeout=3)


def test_pgbouncer_is_in_transaction_mode(harness: DevStack) -> None:
    config = {row["key"]: row["value"] for row in _pgbouncer_admin(harness, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"
    # Absent before PgBouncer 1.21, which could not keep prepared statements.
    assert config.get("max_prepared_statements", "0") == "0"

    _query(harness.database_url, "SELECT 1")  # makes sure the pool exists
    pools = _pgbouncer_admin(harness, "SHOW POOLS")
    ours = [row for row in pools if row["database"] == APP_DATABASE and row["user"] == APP_USER]
    assert ours, pools
    if "pool_mode" in ours[0]:
        assert ours[0]["pool_mode"] == "transaction"


def test_pgbouncer_hands_server_connections_back_after_each_transaction(
    harness: DevStack,
) -> None:
    # In transaction mode a client between transactions holds no server
    # connection: many idle clients need no more than a handful of servers.
    clients = [psycopg2.connect(harness.database_url, connect_timeout=3) for _ in range(30)]
    try:
        for conn in clients:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        pools = _pgbouncer_admin(harness, "SHOW POOLS")
        ours = next(r for r in pools if r["database"] == APP_DATABASE and r["user"] == APP_USER)
        assert ours["cl_active"] + ours.get("cl_waiting", 0) >= 30
        servers = _pgbouncer_admin(harness, "SHOW SERVERS")
        assert len([s for s in servers if s["database"] == APP_DATABASE]) < 30
    finally:
        for conn in clients:
            conn.close()


def test_redis_requires_the_password(harness: DevStack) -> None:
    # retry=None: redis-py 8 retries an AuthenticationError for ~4 s by default.
    anonymous = redis.Redis(host=harness.host, port=harness.redis_port, socket_timeout=3, retry=None)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    wrong = redis.Redis(
        host=harness.host,
        port=harness.redis_port,
        password="wrong",
        socket_timeout=3,
        retry=None,
    )
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    wrong.close()

    client = redis.Redis.from_url(harness.redis_url, socket_timeout=3)
    try:
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
    finally:
        client.close()


def test_flush_redis(harness: DevStack) -> None:
    client = redis.Redis.from_url(harness.redis_url, socket_timeout=3)
    try:
        client.set("harness:key", "1")
        harness.flush_redis()
        assert client.get("harness:key") is None
    finally:
        client.close()


def test_env(harness: DevStack) -> None:
    assert harness.env() == {
        "SHORTENER_DATABASE_URL": harness.database_url,
        "SHORTENER_REDIS_URL": harness.redis_url,
        "SHORTENER_ACCESS_PROFILE": "open",
    }


def test_start_is_idempotent_and_reuses_running_servers(harness: DevStack) -> None:
    before = {name: info["pid"] for name, info in harness.status().items()}
    assert all(before.values()), before
    again = _selftest_services()
    started = time.monotonic()
    again.start()
    elapsed = time.monotonic() - started
    again.close()
    assert {name: info["pid"] for name, info in harness.status().items()} == before
    assert again.started == set()
    assert elapsed < 5, f"warm start took {elapsed:.2f}s"


def test_reset_database_drops_everything_quickly(harness: DevStack) -> None:
    conn = psycopg2.connect(harness.database_url, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            for i in range(10):
                cur.execute(
                    f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, v text UNIQUE, created timestamptz DEFAULT now())"
                )
                cur.execute(f"CREATE INDEX ON t{i} (created)")
                cur.execute(f"INSERT INTO t{i} (v) SELECT g::text FROM generate_series(1, 100) g")
            cur.execute("CREATE TYPE mood AS ENUM ('ok', 'meh')")
            cur.execute("CREATE SCHEMA extra")
            cur.execute("CREATE TABLE extra.t (id int)")
    finally:
        conn.close()

    started = time.monotonic()
    harness.reset_database()
    elapsed = time.monotonic() - started

    remaining = _query(
        harness.admin_database_url,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    assert remaining == []
    assert _query(harness.admin_database_url, "SELECT 1 FROM pg_type WHERE typname = 'mood'") == []
    # The app can build its schema again straight away, through PgBouncer.
    _query(harness.database_url, "CREATE TABLE t0 (id int) ; SELECT 1")
    harness.reset_database()
    assert elapsed < 2, f"reset_database took {elapsed:.3f}s"


def test_reset_database_gets_past_a_client_holding_a_lock(harness: DevStack) -> None:
    _query(harness.database_url, "CREATE TABLE locked (id int); SELECT 1")
    holder = psycopg2.connect(harness.direct_database_url, connect_timeout=3)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE locked IN ACCESS SHARE MODE")  # transaction stays open
        harness.reset_database()
        assert _query(harness.admin_database_url, "SELECT 1 FROM pg_tables WHERE tablename = 'locked'") == []
    finally:
        holder.close()


def test_stop_and_start_redis(harness: DevStack) -> None:
    client = redis.Redis.from_url(harness.redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        assert client.ping()
        harness.stop_redis()
        assert harness.redis_pid() is None
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        harness.start_redis()
        assert client.ping()  # the client reconnects by itself
    finally:
        client.close()
        harness.start_redis()


def test_stop_and_start_postgres(harness: DevStack) -> None:
    try:
        harness.stop_postgres()
        assert harness.postgres_pid() is None
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(harness.direct_database_url, connect_timeout=2)
        # PgBouncer stays up (a client would wait up to query_wait_timeout).
        assert harness.pgbouncer_pid() is not None
        harness.start_postgres()
        # start_postgres() returns only once PgBouncer reaches it again.
        assert _query(harness.database_url, "SELECT 1") == [(1,)]
        assert _query(harness.direct_database_url, "SELECT 1") == [(1,)]
    finally:
        harness.start_postgres()


def test_postgres_comes_back_after_a_crash(harness: DevStack) -> None:
    try:
        harness.stop_postgres(mode="immediate")
        assert harness.postgres_pid() is None
        harness.start_postgres()
        assert _query(harness.database_url, "SELECT 1") == [(1,)]
    finally:
        harness.start_postgres()


def test_stop_and_start_pgbouncer(harness: DevStack) -> None:
    try:
        harness.stop_pgbouncer()
        assert harness.pgbouncer_pid() is None
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(harness.database_url, connect_timeout=2)
        assert _query(harness.direct_database_url, "SELECT 1") == [(1,)]
        harness.start_pgbouncer()
        assert _query(harness.database_url, "SELECT 1") == [(1,)]
    finally:
        harness.start_pgbouncer()


def test_cli_env_and_status(
    harness: DevStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_DIR_ENV, str(harness.base_dir))
    monkeypatch.setenv(PG_PORT_ENV, str(harness.pg_port))
    monkeypatch.setenv(PGBOUNCER_PORT_ENV, str(harness.pgbouncer_port))
    monkeypatch.setenv(REDIS_PORT_ENV, str(harness.redis_port))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export SHORTENER_DATABASE_URL={harness.database_url}\n" in out
    assert f"export SHORTENER_REDIS_URL={harness.redis_url}\n" in out
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.count("answers") == 3
