"""What the service does when a dependency fails (docs/failure-modes.md names each case)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from app.cache import KEY_PREFIX
from app.config import Settings
from tests.http_helpers import wait_for


@pytest.fixture
def redis_stopped(clean):
    clean.stop_redis()
    yield clean
    clean.start_redis()


def test_redis_down_every_endpoint_still_answers(app_factory, redis_stopped, sql):
    client = app_factory().test_client()
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["cache"] == "degraded" and health.get_json()["database"] == "ok"
    user = client.post("/users", json={"username": "r", "email": "r@example.com"}).get_json()
    url = client.post("/urls", json={"original_url": "https://example.com/r", "user_id": user["id"]})
    assert url.status_code == 201
    url = url.get_json()
    assert client.get(f"/{url['short_code']}").status_code == 302
    assert client.put(f"/urls/{url['id']}", json={"title": "t"}).status_code == 200
    assert client.get("/urls").status_code == 200 and client.get("/users").status_code == 200
    assert client.post("/events", json={"event_type": "x"}).status_code == 201
    # The redirect wrote its click itself.
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'")[0][0] == 1
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 1
    assert client.get("/unknown").status_code == 404
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'shortener_dependency_up{dependency="cache"} 0.0' in metrics
    assert 'shortener_cache_requests_total{result="bypass"}' in metrics
    assert client.delete(f"/urls/{url['id']}").status_code == 204


def test_redis_back_closes_the_breaker(app_factory, clean, make_url):
    app = app_factory(breaker_reset_seconds=0.2)
    client = app.test_client()
    url = make_url()
    clean.stop_redis()
    try:
        for _ in range(4):
            assert client.get(f"/{url['short_code']}").status_code == 302
        assert app.extensions["shortener"].cache.breaker.is_open
    finally:
        clean.start_redis()
    time.sleep(0.3)
    assert client.get("/health").get_json()["cache"] == "ok"
    assert client.get(f"/{url['short_code']}").status_code == 302
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 5


def test_hanging_redis_is_not_waited_on_once_the_breaker_is_open(app_factory, blackhole, make_url, clean):
    app = app_factory(
        redis_url=f"redis://127.0.0.1:{blackhole.port}/0",
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
        breaker_failure_threshold=2,
        breaker_reset_seconds=60,
    )
    client = app.test_client()
    url = client.post("/urls", json={"original_url": "https://example.com/h"}).get_json()
    for _ in range(2):
        client.get(f"/{url['short_code']}")
    assert app.extensions["shortener"].cache.breaker.is_open
    attempts = blackhole.connections
    started = time.perf_counter()
    for _ in range(20):
        assert client.get(f"/{url['short_code']}").status_code == 302
    elapsed = time.perf_counter() - started
    # Not one more connection to the hanging Redis, so no request waited on its timeout
    # (20 waits would have taken at least 4 s).
    assert blackhole.connections == attempts
    assert elapsed < 20 * 0.2
    assert client.get("/health").get_json()["cache"] == "degraded"
    assert blackhole.connections == attempts


def test_invalidations_lost_while_redis_hung_are_not_served_stale(app_factory, make_url, redis):
    app = app_factory(redis_socket_timeout=0.1, breaker_failure_threshold=1, breaker_reset_seconds=0.3)
    client = app.test_client()
    url = make_url()
    client.get(f"/{url['short_code']}")
    assert redis.get(KEY_PREFIX + url["short_code"]) is not None
    redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # Redis hangs but keeps its data
    assert client.put(f"/urls/{url['id']}", json={"is_active": False}).status_code == 200
    assert app.extensions["shortener"].cache.breaker.is_open
    assert client.get(f"/{url['short_code']}").status_code == 404
    time.sleep(1.7)
    # The breaker's probe succeeds and makes the lost invalidation before anything reads.
    assert client.get(f"/{url['short_code']}").status_code == 404
    assert client.get("/health").get_json()["cache"] == "ok"


def test_a_late_probe_keeps_the_cache_of_links_nobody_changed(app_factory, make_url, redis):
    """A breaker that opened on a short Redis hiccup and probes much later (a worker with no
    Redis call meanwhile) must not empty the link cache: nothing was lost. Emptying it once
    took every cached redirect down during a database outage (make chaos, 08-pgbouncer-stop)."""
    app = app_factory(redis_socket_timeout=0.1, breaker_failure_threshold=1, breaker_reset_seconds=0.3)
    client = app.test_client()
    kept, changed = make_url(), make_url()
    for url in (kept, changed):
        client.get(f"/{url['short_code']}")
        assert redis.get(KEY_PREFIX + url["short_code"]) is not None
    redis.execute_command("CLIENT", "PAUSE", "600", "ALL")
    assert client.put(f"/urls/{changed['id']}", json={"is_active": False}).status_code == 200
    assert app.extensions["shortener"].cache.breaker.is_open
    time.sleep(1.5)  # Redis long back; this instance has not called it since
    assert client.get("/health").get_json()["cache"] == "ok"  # its ping is the probe
    assert redis.get(KEY_PREFIX + kept["short_code"]) is not None  # not emptied
    assert client.get(f"/{changed['short_code']}").status_code == 404  # the lost one made


def test_postgres_down_health_is_503_and_api_errors_are_json(app_factory, clean, make_url):
    client = app_factory(db_connect_timeout=1).test_client()
    url = make_url()
    assert client.get(f"/{url['short_code']}").status_code == 302  # now cached
    clean.stop_postgres()
    try:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json()["status"] == "unavailable" and health.get_json()["database"] == "unavailable"
        for response in (
            client.get("/users"),
            client.post("/users", json={"username": "x", "email": "x@example.com"}),
            client.get(f"/urls/{url['id']}"),
        ):
            assert response.status_code == 503
            assert "error" in response.get_json()
            assert response.headers["Retry-After"] == "5"
        # Cached links keep redirecting; their clicks wait in Redis.
        for _ in range(3):
            assert client.get(f"/{url['short_code']}").status_code == 302
        assert client.get("/notcached1").status_code == 503
    finally:
        clean.start_postgres()
    deadline = time.monotonic() + 15
    while client.get("/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert client.get("/health").status_code == 200
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 4


def test_redis_and_postgres_both_down_a_redirect_is_a_json_503(app_factory, clean, make_url):
    # Nothing can say where the code goes: a JSON 503 with Retry-After, not a hang or a 500.
    # A Redis read slower than its timeout opens the breaker and leads here too while
    # PostgreSQL is down (tests/test_clickloss.py's own_server, CI beside a VM, 2026-12-01).
    client = app_factory(db_connect_timeout=1).test_client()
    url = make_url()
    clean.stop_redis()
    clean.stop_postgres()
    try:
        redirect = client.get(f"/{url['short_code']}")
        assert redirect.status_code == 503
        assert "error" in redirect.get_json() and redirect.headers["Retry-After"] == "5"
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json()["database"] == "unavailable" and health.get_json()["cache"] == "degraded"
    finally:
        clean.start_postgres()
        clean.start_redis()
    wait_for("the breaker's probe to find Redis", lambda: client.get("/health").get_json()["cache"] == "ok", 15, 0.3)
    assert client.get(f"/{url['short_code']}").status_code == 302
    # Only the redirect that was served is a click: the refused one recorded nothing.
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 1


def test_pool_exhausted_is_503_not_a_hang(app_factory):
    app = app_factory(db_pool_max=1, db_pool_timeout=0.2)
    client = app.test_client()
    db = app.extensions["shortener"].db
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with db.connection():
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        response = client.get("/users")
        assert response.status_code == 503
        assert "metrics" not in response.get_json()
        assert "shortener_db_pool_timeouts_total" in client.get("/metrics").get_data(as_text=True)
    finally:
        release.set()
        thread.join()
    assert client.get("/users").status_code == 200


def test_a_broken_connection_is_replaced(app, client, sql):
    db = app.extensions["shortener"].db
    assert client.get("/users").status_code == 200
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'shortener' AND pid <> pg_backend_pid()"
    )
    # The pooled connection is dead (PgBouncer's server side was killed): at most one request
    # fails with 503, and the next one works again.
    statuses = [client.get("/users").status_code for _ in range(3)]
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}
    assert db.in_use == 0


def test_redis_out_of_memory_still_redirects_and_keeps_the_click(app_factory, make_url, redis, sql):
    client = app_factory().test_client()
    url = make_url()
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")
    try:
        for _ in range(4):
            assert client.get(f"/{url['short_code']}").status_code == 302
    finally:
        redis.config_set("maxmemory", "0")
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'")[0][0] == 4


def tcp_options(fileno: int) -> tuple[int, ...]:
    """SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT of a socket."""
    sock = socket.fromfd(fileno, socket.AF_INET, socket.SOCK_STREAM)  # a dup: closing it leaves libpq's
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )
    finally:
        sock.close()


def test_database_connections_carry_the_dead_peer_options(app_factory, clean):
    """A peer that vanishes silently (partition, relay gone) must not hold a call for the
    kernel's defaults (2 h before the first keepalive, no user timeout): the settings' options
    are on the real socket to PgBouncer (the click worker, migrations and CLIs pass the same
    Settings.db_connect_options to their pools)."""
    options = {"db_keepalives_idle": 7, "db_keepalives_interval": 4, "db_keepalives_count": 2}
    app = app_factory(db_tcp_user_timeout_ms=9000, **options)
    with app.extensions["shortener"].db.connection() as conn:
        assert conn.info.port == clean.pgbouncer_port
        assert tcp_options(conn.fileno()) == (1, 7, 4, 2, 9000)


def test_the_default_dead_peer_options_give_up_well_within_a_minute():
    settings = Settings()
    assert settings.db_keepalives_idle + settings.db_keepalives_interval * settings.db_keepalives_count < 60
    assert 0 < settings.db_tcp_user_timeout_ms < 60_000
