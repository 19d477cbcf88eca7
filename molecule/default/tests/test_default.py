"""Verify the all-in-one lab host: units, exposure, the API through Nginx, restarts, reboot.

Runs in Molecule's verify step (testinfra over Molecule's Ansible inventory). HTTP checks go
from the machine running Molecule to the host's address on the lab bridge, the way a user
would reach it.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests

from labkit.hosts import hosts_of

testinfra_hosts = hosts_of("all")

INSTANCES = (8001, 8002, 8003)
UNITS = (
    "nginx",
    "postgresql@15-main",
    "pgbouncer",
    "redis-server",
    "shortener-clickworker",
    *(f"shortener@{port}" for port in INSTANCES),
)


@pytest.fixture(scope="module")
def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def base(address) -> str:
    return f"http://{address}"


def wait_healthy(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/health", timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"{base}/health did not answer 200 within {timeout} s")


def boot_of(host) -> str:
    # In a container the kernel's boot id stays; PID 1's start time tells a new boot.
    return host.check_output("ps -o lstart= -p 1")


def wait_rebooted(host, booted: str, timeout: float) -> None:
    """Until PID 1 is a new one. /health alone cannot tell: under emulation (a Vagrant VM on a
    machine without KVM) the old boot goes on answering for seconds after the reboot began, and
    the host is unreachable between the two boots."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if boot_of(host) != booted:
                return
        except (AssertionError, RuntimeError):
            pass  # going down, or not up yet: no SSH, or no answer from ps
        time.sleep(2)
    raise AssertionError(f"the host did not reboot within {timeout} s")


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_active_and_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running, unit
    assert service.is_enabled, unit


def test_health_through_nginx(base):
    response = requests.get(f"{base}/health", timeout=5)
    assert response.status_code == 200
    assert response.json()["database"] == "ok" and response.json()["cache"] == "ok"
    assert response.headers.get("X-Request-ID")
    # A client's id comes back once (Nginx hides the instance's copy; requests joins repeats with ", ").
    given = requests.get(f"{base}/health", headers={"X-Request-ID": "verify-7"}, timeout=5)
    assert given.headers["X-Request-ID"] == "verify-7"


def test_shorten_follow_and_count_through_nginx(api, base):
    tag = uuid.uuid4().hex[:8]
    user = api.post(f"{base}/users", json={"username": f"v{tag}", "email": f"v{tag}@example.com"}, timeout=5)
    assert user.status_code == 201
    url = api.post(
        f"{base}/urls",
        json={"original_url": f"https://example.com/{tag}", "user_id": user.json()["id"]},
        timeout=5,
    )
    assert url.status_code == 201
    code = url.json()["short_code"]
    follow = requests.get(f"{base}/{code}", allow_redirects=False, timeout=5)
    assert follow.status_code == 302
    assert follow.headers["Location"] == f"https://example.com/{tag}"
    clicks = api.get(f"{base}/events", params={"url_id": url.json()["id"], "event_type": "click"}, timeout=5)
    assert clicks.status_code == 200
    assert len(clicks.json()) == 1


def test_errors_through_nginx_are_json(api, base):
    response = api.post(f"{base}/urls", data="not json", headers={"Content-Type": "text/plain"}, timeout=5)
    assert response.status_code == 400
    assert "error" in response.json()
    assert requests.get(f"{base}/nosuch", timeout=5).json() == {"error": "Short link not found"}


def _health_requests(host, port: int) -> float:
    text = host.check_output(f"curl -sf http://127.0.0.1:{port}/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("shortener_http_requests_total{") and 'endpoint="/health"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_load_balancer_uses_all_three_instances(host, base):
    before = {port: _health_requests(host, port) for port in INSTANCES}
    for _ in range(60):
        assert requests.get(f"{base}/health", timeout=5).status_code == 200
    after = {port: _health_requests(host, port) for port in INSTANCES}
    served = {port: after[port] - before[port] for port in INSTANCES}
    assert all(count > 0 for count in served.values()), served
    assert sum(served.values()) >= 60


def test_a_database_outage_does_not_take_the_instances_out_of_nginx(host, api, base):
    """The instances' 503s (PostgreSQL unavailable) reach the client as they are; Nginx must not
    count them against the instances, or it soon has none left and answers 502 to everything,
    redirects that Redis alone could serve included."""
    code = api.post(f"{base}/urls", json={"original_url": "https://example.com/pgdown"}, timeout=5).json()["short_code"]
    assert requests.get(f"{base}/{code}", allow_redirects=False, timeout=5).status_code == 302  # now cached
    host.run_expect([0], "systemctl stop pgbouncer")
    try:
        needs_db = [api.get(f"{base}/users", timeout=10) for _ in range(6)]
        redirects = [requests.get(f"{base}/{code}", allow_redirects=False, timeout=5).status_code for _ in range(30)]
    finally:
        host.run_expect([0], "systemctl start pgbouncer")
    assert {r.status_code for r in needs_db} == {503}
    assert all("error" in r.json() for r in needs_db)
    assert set(redirects) == {302}, {s: redirects.count(s) for s in set(redirects)}
    wait_healthy(base)


def test_reboot_brings_everything_back_without_data_loss(host, api, base):
    tag = uuid.uuid4().hex[:8]
    url = api.post(f"{base}/urls", json={"original_url": f"https://example.com/r{tag}"}, timeout=5).json()
    for _ in range(3):
        assert requests.get(f"{base}/{url['short_code']}", allow_redirects=False, timeout=5).status_code == 302
    params = {"url_id": url["id"], "event_type": "click"}
    assert len(api.get(f"{base}/events", params=params, timeout=5).json()) == 3
    booted = boot_of(host)
    host.run("systemd-run --on-active=1 --timer-property=AccuracySec=100ms systemctl reboot")
    wait_rebooted(host, booted, timeout=600)
    wait_healthy(base, timeout=180)
    # One instance behind Nginx is enough for /health; the others may still be starting.
    timeout = 180
    deadline = time.monotonic() + timeout
    while (down := [u for u in UNITS if not host.service(u).is_running]) and time.monotonic() < deadline:
        time.sleep(2)
    assert down == [], f"not running {timeout} s after the reboot: {down}"
    assert api.get(f"{base}/urls/{url['id']}", timeout=5).status_code == 200
    assert len(api.get(f"{base}/events", params=params, timeout=5).json()) == 3
    follow = requests.get(f"{base}/{url['short_code']}", allow_redirects=False, timeout=5)
    assert follow.status_code == 302 and re.search(tag, follow.headers["Location"])
