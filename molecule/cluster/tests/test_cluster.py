"""Verify the five-host cluster: each group's units, the firewall between hosts, the API
through the load balancer, all six instances in use, an instance killed under traffic.

Runs in Molecule's verify step (testinfra over Molecule's Ansible inventory). HTTP checks go
from the machine running Molecule to the load balancer's address on the lab bridge.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from conftest import admin_api_key

from labkit.hosts import address_of, hosts_of
from labkit.hosts import testinfra_host as host_named  # not "test...": pytest would collect it
from labkit.probes import port_open
from labkit.traffic import Traffic

testinfra_hosts = hosts_of("all")

INSTANCES = (8001, 8002, 8003)
UNITS_BY_GROUP = {
    "lb": ("nginx",),
    "app": ("shortener-clickworker", *(f"shortener@{port}" for port in INSTANCES)),
    "db": ("postgresql@15-main", "pgbouncer"),
    "cache": ("redis-server",),
}
# Ports that must answer only to the hosts that need them, never to the outside.
SERVICE_PORTS = {"app": INSTANCES, "db": (5432, 6432), "cache": (6379,)}


def groups_of(name: str) -> set[str]:
    return {group for group in ("lb", "app", "db", "cache") if name in hosts_of(group)}


@pytest.fixture(scope="module")
def base() -> str:
    return f"http://{address_of(hosts_of('lb')[0])}"


def test_each_host_runs_its_groups_units(host):
    name = host.backend.get_hostname()
    for group in groups_of(name):
        for unit in UNITS_BY_GROUP[group]:
            service = host.service(unit)
            assert service.is_running and service.is_enabled, f"{unit} on {name}"


def test_from_outside_only_ssh_and_http_on_the_load_balancer(host):
    name = host.backend.get_hostname()
    address = address_of(name)
    assert port_open(address, 22)
    assert port_open(address, 80) == ("lb" in groups_of(name))
    for group, ports in SERVICE_PORTS.items():
        if group in groups_of(name):
            assert [p for p in ports if port_open(address, p)] == [], f"{name} exposes service ports"


def _reaches(host, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('{address}', {port}), timeout=2)"
    return host.run(f'python3 -c "{probe}"').rc == 0


def test_service_ports_answer_only_the_hosts_that_need_them(host):
    name = host.backend.get_hostname()
    mine = groups_of(name)
    app_hosts, db_host, cache_host = hosts_of("app"), hosts_of("db")[0], hosts_of("cache")[0]
    if "lb" in mine:
        assert all(_reaches(host, address_of(a), 8001) for a in app_hosts)
        assert not _reaches(host, address_of(db_host), 6432)
    if "app" in mine:
        assert _reaches(host, address_of(db_host), 6432)
        assert _reaches(host, address_of(cache_host), 6379)
    if "db" in mine:
        assert not _reaches(host, address_of(cache_host), 6379)


def test_shorten_follow_and_count_through_the_load_balancer(api, base):
    tag = uuid.uuid4().hex[:8]
    url = api.post(f"{base}/urls", json={"original_url": f"https://example.com/{tag}"}, timeout=5)
    assert url.status_code == 201
    code, url_id = url.json()["short_code"], url.json()["id"]
    for _ in range(6):
        follow = requests.get(f"{base}/{code}", allow_redirects=False, timeout=5)
        assert follow.status_code == 302 and follow.headers["Location"] == f"https://example.com/{tag}"
    # Clicks recorded by instances on both app hosts, listed through any of them.
    clicks = api.get(f"{base}/events", params={"url_id": url_id, "event_type": "click"}, timeout=5)
    assert len(clicks.json()) == 6
    # A deactivation through one instance is seen by all of them at once.
    assert api.put(f"{base}/urls/{url_id}", json={"is_active": False}, timeout=5).status_code == 200
    assert {requests.get(f"{base}/{code}", allow_redirects=False, timeout=5).status_code for _ in range(12)} == {404}


def _health_requests(host, port: int) -> float:
    # On an app host of the cluster the instances listen on the host's address, not loopback;
    # /metrics answers that address only with an admin key (the monitoring host needs none).
    address = address_of(host.backend.get_hostname())
    text = host.check_output(f"curl -sf -H 'Authorization: Bearer {admin_api_key()}' http://{address}:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shortener_http_requests_total{") and 'endpoint="/health"' in line
    )


def test_the_load_balancer_uses_all_six_instances(host, api, base):
    if "lb" not in groups_of(host.backend.get_hostname()):
        pytest.skip("runs once, on the load balancer")
    apps = [host_named(name) for name in hosts_of("app")]
    before = {(i, p): _health_requests(app, p) for i, app in enumerate(apps) for p in INSTANCES}
    # With the admin key: 120 anonymous GETs in a row outrun Nginx's read limit (20/s, burst
    # 100) on a fast machine, and a 429 would say nothing about the balancing.
    for _ in range(120):
        assert api.get(f"{base}/health", timeout=5).status_code == 200
    served = {k: _health_requests(apps[k[0]], k[1]) - v for k, v in before.items()}
    assert all(n > 0 for n in served.values()), served


def test_an_instance_killed_under_traffic_loses_no_request(host, api, base):
    name = host.backend.get_hostname()
    if name != hosts_of("app")[0]:
        pytest.skip("runs once, on the first app host")
    code = api.post(f"{base}/urls", json={"original_url": "https://example.com/k"}, timeout=5).json()["short_code"]
    old = host.check_output("systemctl show -p MainPID --value shortener@8002")
    with Traffic(f"{base}/{code}") as traffic:
        time.sleep(1)
        host.run(f"kill -9 {old}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = host.check_output("systemctl show -p MainPID --value shortener@8002")
            if pid not in ("0", old) and host.run("systemctl is-active shortener@8002").rc == 0:
                break
            time.sleep(0.5)
        time.sleep(2)
    assert host.service("shortener@8002").is_running
    assert traffic.answers and set(traffic.answers) == {302}, traffic.counts()
