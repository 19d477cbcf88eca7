"""The Nginx edge (issue 14): a real Nginx with the Lua module answers cached redirects itself,
in front of a real Gunicorn instance, on the suite's PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis as redis_lib
import requests

from app import clicks
from app.cache import KEY_PREFIX, TOMBSTONE
from devstack import DevStack
from tests import edge_nginx, test_clickloss
from tests.http_helpers import Process, run_gunicorn, wait_for
from tests.test_clickloss import Burst, _assert_every_click_stored, _drained, _kill_mid_batch, _warm

# The click-loss test's fixtures (a Redis client, click workers with small batches), shared.
rds = test_clickloss.rds
workers = test_clickloss.workers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instance(stack: DevStack, _schema: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log_dir = tmp_path_factory.mktemp("edge-gunicorn")
    env = {**stack.env(), "PROMETHEUS_MULTIPROC_DIR": str(log_dir / "metrics"), "SHORTENER_ACCESS_LOG": "all"}
    with run_gunicorn(env, log_dir=log_dir) as gun:
        yield gun


@pytest.fixture(scope="module")
def edge(stack: DevStack, instance: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[edge_nginx.Edge]:
    if edge_nginx.missing():
        packages = "nginx libnginx-mod-http-lua lua-nginx-redis"
        pytest.fail(f"{edge_nginx.missing()} missing; as root: apt-get install -y {packages}")
    directory = tmp_path_factory.mktemp("edge-nginx")
    with edge_nginx.run_edge(
        directory, instance.port, stack.redis_port, redis_password=stack.passwords["redis"]
    ) as nginx:
        yield nginx


def get(edge: edge_nginx.Edge, path: str, method: str = "GET", **headers: str) -> requests.Response:
    return requests.request(method, edge.base_url + path, headers=headers, allow_redirects=False, timeout=10)


def stream_clicks(redis: redis_lib.Redis, code: str) -> list[dict[str, str]]:
    return [f for _, f in redis.xrange("shortener:clicks") if f.get(clicks.F_CODE) == code]


def answer(response: requests.Response) -> tuple[int, dict[str, str], bytes]:
    """What a client sees of a redirect: status, the headers that matter, body."""
    keep = ("Location", "Cache-Control", "Content-Type", "Content-Length")
    return response.status_code, {name: response.headers.get(name, "") for name in keep}, response.content


def test_a_hit_is_answered_by_the_edge_like_the_instances_and_queues_the_same_click(
    edge: edge_nginx.Edge, instance: Process, make_url: Any, redis: redis_lib.Redis
) -> None:
    url = make_url(original_url="https://example.com/landing?x=1")
    code = url["short_code"]
    # The first one misses: the instance answers and fills the cache.
    first = get(edge, f"/{code}", **{"X-Request-ID": "edge-miss-1"})
    assert edge.access_of("edge-miss-1")["edge"] == "miss"
    assert edge.access_of("edge-miss-1")["upstream_addr"] != ""
    # Then the edge answers, with what the instance answered.
    second = get(edge, f"/{code}", **{"X-Request-ID": "edge-hit-1", "Referer": "https://ref/", "User-Agent": "ua/1"})
    line = edge.access_of("edge-hit-1")
    assert line["edge"] == "hit" and line["upstream_addr"] == "" and line["status"] == 302
    assert answer(second) == answer(first)
    assert answer(second)[1]["Location"] == "https://example.com/landing?x=1"
    assert second.headers["X-Request-ID"] == "edge-hit-1"
    direct = requests.get(f"{instance.base_url}/{code}", allow_redirects=False, timeout=10)
    assert answer(second) == answer(direct)

    queued = stream_clicks(redis, code)
    assert len(queued) == 3
    edge_click = next(f for f in queued if f[clicks.F_REQUEST_ID] == "edge-hit-1")
    instance_click = next(f for f in queued if f[clicks.F_REQUEST_ID] == "edge-miss-1")
    # The same fields, the same way round: a row made from either has the same shape.
    assert set(edge_click) == set(instance_click)
    row = clicks.row_from_fields(edge_click)
    assert row["url_id"] == url["id"] and row["user_id"] is None
    assert row["details"] == {
        "short_code": code,
        "referrer": "https://ref/",
        "user_agent": "ua/1",
        "request_id": "edge-hit-1",
    }
    assert len(row["click_id"]) == 24 and edge_click[clicks.F_TIME] < "9999" and "T" in edge_click[clicks.F_TIME]


def test_header_bytes_that_are_not_utf8_are_queued_by_the_edge_as_by_the_instances(
    edge: edge_nginx.Edge, make_url: Any, redis: redis_lib.Redis
) -> None:
    """A latin-1 referrer byte and a user agent longer than the edge's cut (2,048 bytes, in the
    middle of a two-byte character) end up as the same stored text either way."""
    code = make_url(original_url="https://example.com/headers")["short_code"]
    sent = {"Referer": b"https://r/caf\xe9", "User-Agent": b"ua caf\xc3\xa9 " + b"\xc3\xa9" * 1100}
    for request_id in ("hdr-miss", "hdr-hit"):
        headers = {"X-Request-ID": request_id, **sent}
        requests.get(f"{edge.base_url}/{code}", headers=headers, allow_redirects=False, timeout=10)
    assert edge.access_of("hdr-miss")["edge"] == "miss" and edge.access_of("hdr-hit")["edge"] == "hit"
    stored = {f[clicks.F_REQUEST_ID]: clicks.row_from_fields(f)["details"] for f in stream_clicks(redis, code)}
    assert stored["hdr-hit"]["referrer"] == stored["hdr-miss"]["referrer"] == "https://r/caf\u00e9"
    assert stored["hdr-hit"]["user_agent"] == stored["hdr-miss"]["user_agent"]
    assert stored["hdr-hit"]["user_agent"].startswith("ua caf\u00e9 \u00e9\u00e9")


def test_deactivate_reactivate_and_delete_take_effect_at_once_through_the_edge(
    edge: edge_nginx.Edge, client: Any, make_url: Any, redis: redis_lib.Redis
) -> None:
    url = make_url()
    path = f"/{url['short_code']}"
    assert get(edge, path).status_code == 302  # miss, fills
    assert get(edge, path, **{"X-Request-ID": "edge-before"}).status_code == 302
    assert edge.access_of("edge-before")["edge"] == "hit"

    assert client.put(f"/urls/{url['id']}", json={"is_active": False}).status_code == 200
    gone = get(edge, path, **{"X-Request-ID": "edge-inactive"})
    assert gone.status_code == 404 and gone.headers["Content-Type"].startswith("application/json")
    assert edge.access_of("edge-inactive")["edge"] in ("tombstone", "negative")

    assert client.put(f"/urls/{url['id']}", json={"is_active": True}).status_code == 200
    assert get(edge, path).status_code == 302

    assert client.delete(f"/urls/{url['id']}").status_code in (200, 204)
    assert get(edge, path).status_code == 404
    assert redis.get(KEY_PREFIX + url["short_code"]) in (TOMBSTONE, "-")


def test_unknown_codes_reserved_paths_and_head_go_to_the_instances_and_head_is_no_click(
    edge: edge_nginx.Edge, make_url: Any, redis: redis_lib.Redis
) -> None:
    unknown = get(edge, "/NoSuchCode9", **{"X-Request-ID": "edge-unknown"})
    assert unknown.status_code == 404 and unknown.json()["error"]
    assert edge.access_of("edge-unknown")["edge"] == "miss"
    assert get(edge, "/NoSuchCode9", **{"X-Request-ID": "edge-unknown-2"}).status_code == 404
    assert edge.access_of("edge-unknown-2")["edge"] == "negative"

    # A one-segment API path that reached the short-link location is never looked up.
    health = get(edge, "/users", **{"X-Request-ID": "edge-reserved"})
    assert health.status_code == 200 and isinstance(health.json(), list)
    assert edge.access_of("edge-reserved")["edge"] == "bypass"

    url = make_url()
    path = f"/{url['short_code']}"
    get(edge, path)  # cached now
    before = len(stream_clicks(redis, url["short_code"]))
    head = get(edge, path, "HEAD", **{"X-Request-ID": "edge-head"})
    assert head.status_code == 302 and head.headers["Location"] == url["original_url"]
    assert edge.access_of("edge-head")["edge"] == "bypass"
    assert len(stream_clicks(redis, url["short_code"])) == before


def _click_count(sql: Any, url_id: int) -> int:
    return sql("SELECT count(*) FROM events WHERE event_type = 'click' AND url_id = %s", (url_id,))[0][0]


def test_a_non_ascii_target_is_answered_by_the_instances_and_counted_once(
    edge: edge_nginx.Edge, instance: Process, make_url: Any, sql: Any
) -> None:
    url = make_url(original_url="https://例え.テスト/パス?q=é")
    path = f"/{url['short_code']}"
    answers = [get(edge, path, **{"X-Request-ID": f"edge-idn-{n}"}) for n in range(3)]
    direct = requests.get(instance.base_url + path, allow_redirects=False, timeout=10)
    for response in answers:
        assert answer(response) == answer(direct)
        assert response.headers["Location"].isascii()
    # The second and third were hits the edge handed on (its click already queued): the
    # instance queued them again under the edge's click id, and each is stored once.
    assert edge.access_of("edge-idn-2")["edge"] == "bypass"
    requests.get(f"{instance.base_url}/events?url_id={url['id']}", timeout=10)  # drains the queue
    assert _click_count(sql, url["id"]) == 4


@contextlib.contextmanager
def redis_stopped(stack: DevStack) -> Iterator[None]:
    stack.stop_redis()
    try:
        yield
    finally:
        stack.start_redis()


def test_redis_stopped_costs_nothing_the_instances_answer_and_the_edge_comes_back(
    stack: DevStack, edge: edge_nginx.Edge, instance: Process, make_url: Any, sql: Any
) -> None:
    url = make_url()
    path = f"/{url['short_code']}"
    assert get(edge, path).status_code == 302
    # Its click is written before Redis goes (the suite's Redis keeps nothing on disk).
    requests.get(f"{instance.base_url}/events?url_id={url['id']}", timeout=10)
    assert _click_count(sql, url["id"]) == 1
    with redis_stopped(stack):
        for n in range(8):
            response = get(edge, path, **{"X-Request-ID": f"edge-down-{n}"})
            assert response.status_code == 302 and response.headers["Location"] == url["original_url"]
        states = [edge.access_of(f"edge-down-{n}") for n in range(8)]
        assert {s["edge"] for s in states[:2]} == {"error"}
        # The breaker opened after three failures: the edge no longer calls Redis.
        assert states[-1]["edge"] == "bypass" and states[-1]["edge_breaker"] == "open"
    # Redis is back; after the pause one request probes it and the edge serves again.
    deadline = time.monotonic() + 15
    n = 0
    while True:
        n += 1
        get(edge, path, **{"X-Request-ID": f"edge-back-{n}"})
        if edge.access_of(f"edge-back-{n}")["edge"] in ("hit", "miss"):
            break
        assert time.monotonic() < deadline, "the edge never called Redis again"
        time.sleep(0.2)
    assert "breaker closed" in edge.error_log()

    # Every redirect counted: during the outage the instances wrote the clicks themselves.
    # (Listing events drains the queue; an instance whose own breaker is still open skips that.)
    def all_stored() -> bool:
        requests.get(f"{instance.base_url}/events?url_id={url['id']}", timeout=10)
        return _click_count(sql, url["id"]) == 1 + 8 + n

    wait_for("every click to be stored", all_stored, timeout=30, interval=0.5)


def test_a_hung_redis_costs_a_bounded_wait_then_nothing(
    stack: DevStack, instance: Process, make_url: Any, blackhole: Any, tmp_path: Path
) -> None:
    url = make_url()
    path = f"/{url['short_code']}"
    with edge_nginx.run_edge(tmp_path / "hung", instance.port, blackhole.port) as hung:
        timings = []
        for n in range(10):
            started = time.monotonic()
            response = get(hung, path, **{"X-Request-ID": f"edge-hung-{n}"})
            timings.append(time.monotonic() - started)
            assert response.status_code == 302
        lines = [hung.access_of(f"edge-hung-{n}") for n in range(10)]
    assert [line["edge"] for line in lines[:3]] == ["error"] * 3
    assert {line["edge"] for line in lines[3:]} == {"bypass"}
    # Each failure waits at most the edge's timeout (100 ms here) on top of the instance.
    assert max(timings[:3]) < 1.0, timings
    assert blackhole.connections >= 1


def test_every_redirect_the_edge_serves_is_stored_once_with_the_worker_killed_mid_burst(
    stack: DevStack,
    clean: DevStack,
    edge: edge_nginx.Edge,
    make_url: Any,
    rds: redis_lib.Redis,
    workers: Callable[..., Process],
) -> None:
    codes = [make_url(original_url=f"https://example.com/edge-burst/{n}")["short_code"] for n in range(4)]
    first = workers("edge-burst")
    warmed = _warm(edge, codes)  # through the edge: misses, the instance fills the cache
    burst = Burst(edge.base_url, codes, total=3000).start()
    wait_for("some clicks to be written", lambda: _stored(clean) >= 200, timeout=60)
    assert burst.running(), "the burst ended before the worker could be killed"
    assert _kill_mid_batch(first, rds) > 0
    assert first.proc.returncode == -signal.SIGKILL
    time.sleep(0.5)
    second = workers("edge-burst")
    burst.join()
    assert burst.errors == [] and set(burst.statuses) == {302}
    wait_for("the stream to be written out", lambda: _drained(rds), timeout=60, interval=0.2)
    _assert_every_click_stored(clean, burst, warmed, codes)
    assert second.alive()
    # The edge served them: a 302 line for each redirect, hits but for the few it handed to the
    # instances because Redis answered later than the edge's timeout (or the breaker was open
    # after that): those are counted once too (checked above), and are the instances' answers.
    paths = {f"/{code}" for code in codes}
    answered = Counter(line["edge"] for line in edge.access() if line["status"] == 302 and line["uri"] in paths)
    print(f"edge 302s of the burst's links by what the edge did: {dict(answered)}")
    assert sum(answered.values()) >= burst.served_total, answered
    assert set(answered) <= {"hit", "miss", "error", "bypass"}, answered
    assert answered["hit"] >= 0.95 * burst.served_total, answered


def _stored(stack: DevStack) -> int:
    conn = psycopg2.connect(stack.direct_database_url, connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM events WHERE event_type = 'click'")
            return int(cur.fetchone()[0])
    finally:
        conn.close()
