"""Rate limits of the keys profile: 429 JSON with Retry-After, per key and per address, the
anonymous creation tightest, room for admin automation, the redirect never limited, and
requests still served (and still limited, per process) with Redis stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest
from limits import parse_many
from prometheus_client import REGISTRY

from app import keys
from app.config import Settings
from tests.conftest import keyed_client

_serial = count(1)


def limited(app: Any, scope: str, limit: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "shortener_rate_limited":
            for sample in metric.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels["scope"] == scope
                    and sample.labels["limit"] == limit
                ):
                    total += sample.value
    return total


def _user_key(app: Any) -> tuple[str, dict[str, Any]]:
    db = app.extensions["shortener"].db
    user = db.fetch_one(
        "INSERT INTO users (username, email) VALUES ('k', %s) RETURNING id", (f"k{next(_serial)}@e.com",)
    )
    return keys.create(db, user_id=user["id"], is_admin=False, name="limits")


def test_a_key_over_its_limit_gets_429_json_with_retry_after(app_factory: Callable[..., Any]) -> None:
    app = app_factory(access_profile="keys", rate_limit_read="3/minute")
    key, row = _user_key(app)
    other, _ = _user_key(app)
    client = keyed_client(app, key)
    before = limited(app, "user", "read")
    assert [client.get("/urls").status_code for _ in range(3)] == [200, 200, 200]
    refused = client.get("/urls")
    assert refused.status_code == 429
    assert refused.is_json and "error" in refused.get_json()
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Per key: another key, and the same address without a key for public reads, are unaffected.
    assert keyed_client(app, other).get("/urls").status_code == 200
    assert limited(app, "user", "read") == before + 1
    # The counter names the key by its prefix, never by its secret or an address.
    names = [s.labels for m in REGISTRY.collect() if m.name == "shortener_rate_limited" for s in m.samples]
    assert any(labels["key"] == row["prefix"] for labels in names)
    assert all(key not in str(labels) and "127.0.0.1" not in str(labels) for labels in names)


def test_writes_and_reads_have_separate_budgets(app_factory: Callable[..., Any]) -> None:
    app = app_factory(access_profile="keys", rate_limit_write="1/minute", rate_limit_read="100/minute")
    key, row = _user_key(app)
    client = keyed_client(app, key)
    user_id = row["user_id"]
    assert client.put(f"/users/{user_id}", json={"username": "a"}).status_code == 200
    assert client.put(f"/users/{user_id}", json={"username": "b"}).status_code == 429
    assert client.get(f"/users/{user_id}").status_code == 200


def test_anonymous_creation_is_limited_per_client_address(app_factory: Callable[..., Any], redis: Any) -> None:
    app = app_factory(access_profile="keys", rate_limit_anonymous_create="2/minute")
    client = app.test_client()
    body = {"original_url": "https://example.com"}
    one = {"REMOTE_ADDR": "203.0.113.1"}
    assert [client.post("/urls", json=body, environ_base=one).status_code for _ in range(3)] == [201, 201, 429]
    # The web form shares the budget: same kind of request.
    assert client.post("/", data=body, environ_base=one).status_code == 429
    assert client.post("/urls", json=body, environ_base={"REMOTE_ADDR": "203.0.113.2"}).status_code == 201
    # Behind the trusted proxy each X-Real-IP is its own client; a spoofed one from outside is not.
    proxied = {"REMOTE_ADDR": "127.0.0.1"}
    for client_ip in ("198.51.100.1", "198.51.100.2"):
        answer = client.post("/urls", json=body, environ_base=proxied, headers={"X-Real-IP": client_ip})
        assert answer.status_code == 201
    spoof = client.post("/urls", json=body, environ_base=one, headers={"X-Real-IP": "198.51.100.9"})
    assert spoof.status_code == 429
    # The counters live in Redis under the service's own prefix (its ACL allows shortener:*).
    names = redis.keys("*")
    assert any(n.startswith("shortener:limits") for n in names)
    assert all(n.startswith("shortener:") for n in names)


def _per_second(spec: str) -> float:
    return min(item.amount / item.get_expiry() for item in parse_many(spec))


def test_default_limits_are_tightest_for_anonymous_creation_and_widest_for_admins() -> None:
    s = Settings()
    rates = {
        "anonymous_create": _per_second(s.rate_limit_anonymous_create),
        "create": _per_second(s.rate_limit_create),
        "write": _per_second(s.rate_limit_write),
        "read": _per_second(s.rate_limit_read),
        "admin": _per_second(s.rate_limit_admin),
    }
    assert rates["anonymous_create"] == min(rates.values())
    assert rates["admin"] == max(rates.values())
    assert rates["admin"] >= 1000  # make bench creates links at ~500/s with one admin key
    assert rates["write"] <= rates["read"]


def test_an_admin_key_has_room_for_automation(app_factory: Callable[..., Any]) -> None:
    app = app_factory(access_profile="keys")
    key, _ = keys.create(app.extensions["shortener"].db, user_id=None, is_admin=True, name="bench")
    client = keyed_client(app, key)
    statuses = {client.post("/urls", json={"original_url": f"https://e.com/{i}"}).status_code for i in range(300)}
    assert statuses == {201}


def test_the_redirect_and_health_are_never_limited(app_factory: Callable[..., Any]) -> None:
    app = app_factory(access_profile="keys", rate_limit_read="1/minute", rate_limit_admin="1/minute")
    key, _ = keys.create(app.extensions["shortener"].db, user_id=None, is_admin=True, name="a")
    code = keyed_client(app, key).post("/urls", json={"original_url": "https://example.com"}).get_json()["short_code"]
    client = app.test_client()
    statuses = {client.get(f"/{code}").status_code for _ in range(20)}  # cached and uncached paths
    statuses |= {client.head(f"/{code}").status_code for _ in range(5)}
    assert statuses == {302}
    assert {client.get("/health").status_code for _ in range(5)} == {200}
    assert {client.get("/nope0").status_code for _ in range(5)} == {404}


@pytest.fixture
def redis_stopped(clean: Any) -> Iterator[None]:
    clean.stop_redis()
    yield
    clean.start_redis()


def test_redis_stopped_requests_are_still_served_and_limited_in_memory(
    app_factory: Callable[..., Any], redis_stopped: None
) -> None:
    app = app_factory(access_profile="keys", rate_limit_read="3/minute")
    key, _ = _user_key(app)
    client = keyed_client(app, key)
    statuses = [client.get("/urls").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert client.post("/urls", json={"original_url": "https://example.com"}).status_code == 201
    assert app.test_client().get("/health").status_code == 200


def test_a_hung_redis_is_never_waited_on_by_the_redirect_for_the_limiter(
    app_factory: Callable[..., Any], blackhole: Any
) -> None:
    """chaos 06-redis-hang (docs/chaos-suite.md): once the limiter's storage failed,
    flask-limiter checks it again (after 1, 2, 4 ... s) inside whichever request comes next, the
    redirect included, which then waited a timeout on the hung Redis. The endpoints that are
    never limited do not enter the limiter at all now. A limited request costs one timeout."""
    app = app_factory(
        access_profile="keys",
        redis_url=f"redis://127.0.0.1:{blackhole.port}/0",
        redis_socket_timeout=0.2,
        redis_connect_timeout=0.2,
        breaker_failure_threshold=1,
        breaker_reset_seconds=60,
        rate_limit_read="100/minute",
    )
    key, _ = _user_key(app)
    client = keyed_client(app, key)
    started = time.perf_counter()
    assert client.get("/urls").status_code == 200
    first = time.perf_counter() - started
    assert first < 1.5, f"the first limited request waited {first:.1f} s on the hung Redis"
    # The first redirect opens the cache's breaker (one failure, 60 s), so that no later one
    # connects for the cache; then a check of the limiter's storage is due (after 1 s).
    code = client.post("/urls", json={"original_url": "https://example.com/hung"}).get_json()["short_code"]
    assert app.test_client().get(f"/{code}").status_code == 302
    time.sleep(1.1)
    before = blackhole.connections
    assert {app.test_client().get(f"/{code}").status_code for _ in range(3)} == {302}
    assert blackhole.connections == before


def test_a_counter_left_without_its_expiry_gets_one_at_the_next_hit(
    app_factory: Callable[..., Any], redis: Any
) -> None:
    """The lab's state after chaos 06/07 (docs/failure-modes.md): the admin key's window counter
    in Redis over the limit and without an expiry. The library's script gives an expiry only to
    a counter it has just made, so that key was refused for good; ours gives one to any
    counter that has none, so the refusals end with the window."""
    app = app_factory(access_profile="keys", rate_limit_admin="5/second")
    key, row = keys.create(app.extensions["shortener"].db, user_id=None, is_admin=True, name="stuck")
    client = keyed_client(app, key)
    assert client.get("/urls").status_code == 200
    (counter,) = [name for name in redis.keys("shortener:limits:*") if f"key:{row['id']}/admin" in name]
    assert 0 < redis.pttl(counter) <= 1000
    # What the lab showed: the counter past the limit, no expiry.
    redis.set(counter, 2077)
    assert redis.pttl(counter) == -1
    assert client.get("/urls").status_code == 429  # this window is spent
    assert 0 < redis.pttl(counter) <= 1000, "the hit must give the counter an expiry"
    deadline = time.monotonic() + 3
    while client.get("/urls").status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/urls").status_code == 200
    assert redis.pttl(counter) > 0
