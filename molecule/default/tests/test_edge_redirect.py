"""Verify the deployed edge (issue 14): Nginx answers cached redirects itself, like the instances.

From the machine running Molecule to the lb host's address, the way a visitor would; what
Nginx did with each request is read from its access log in the journal (the "edge" field).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import redis_on

from labkit.hosts import address_of, hosts_of

testinfra_hosts = hosts_of("lb")

ROOT = Path(__file__).resolve().parents[3]
LAB_CA = ROOT / "ansible" / ".secrets" / "lab_ca" / "ca.crt"
EDGE_DIR = "/etc/nginx/shortener-edge"


@pytest.fixture(scope="module")
def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def base(address) -> str:
    return f"https://{address}" if LAB_CA.exists() else f"http://{address}"


@pytest.fixture(scope="module")
def verify() -> str | bool:
    return str(LAB_CA) if LAB_CA.exists() else True


def edge_line(host, request_id: str) -> dict:
    """The access log line of one request, from the file (the journal's copy leaves out the
    edge's hits; the file is written at most a second late)."""
    for _ in range(50):
        out = host.run(f"grep -F '\"{request_id}\"' /var/log/nginx/access.log || true")
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        if lines:
            return lines[-1]
        time.sleep(0.2)
    raise AssertionError(f"no access line for {request_id}")


def follow(address: str, code: str, method: str = "GET") -> tuple[requests.Response, str]:
    request_id = f"verify-edge-{uuid.uuid4().hex[:12]}"
    response = requests.request(
        method, f"http://{address}/{code}", headers={"X-Request-ID": request_id}, allow_redirects=False, timeout=10
    )
    return response, request_id


def test_the_edge_is_installed_with_its_settings_readable_by_root_only(host) -> None:
    for package in ("libnginx-mod-http-lua", "lua-nginx-redis"):
        assert host.package(package).is_installed
    settings = host.file(f"{EDGE_DIR}/settings.lua")
    assert settings.user == "root" and settings.mode == 0o600
    # The service's own script, not a copy that could drift.
    script = (ROOT / "app" / "redirect_hit.lua").read_text()
    assert host.file(f"{EDGE_DIR}/redirect_hit.lua").content_string == script


def test_a_cached_redirect_is_answered_by_the_edge_like_the_instances_and_counted(
    host, address, base, verify, api
) -> None:
    made = api.post(f"{base}/urls", json={"original_url": "https://example.com/edge-verify"}, verify=verify, timeout=10)
    assert made.status_code == 201, made.text
    url = made.json()
    code = url["short_code"]

    first, first_id = follow(address, code)
    second, second_id = follow(address, code)
    assert edge_line(host, first_id)["edge"] == "miss"
    line = edge_line(host, second_id)
    assert line["edge"] == "hit" and line["upstream_addr"] == "" and line["status"] == 302
    # The journal's copy (the log console's) has the miss but not the hit (the flood of a
    # popular link stays in the file: nginx_access_log_journal_edge_hits).
    for _ in range(50):
        journal = host.run("journalctl -q -o cat -t nginx_access --since=-10min").stdout
        if first_id in journal:
            break
        time.sleep(0.2)
    assert first_id in journal and second_id not in journal
    keep = ("location", "cache-control", "content-type", "content-length", "x-content-type-options")
    assert {k: second.headers.get(k) for k in keep} == {k: first.headers.get(k) for k in keep}
    assert second.status_code == first.status_code == 302
    assert second.headers["location"] == "https://example.com/edge-verify"
    assert second.headers["x-request-id"] == second_id

    head, head_id = follow(address, code, "HEAD")
    assert head.status_code == 302 and edge_line(host, head_id)["edge"] == "bypass"

    events = api.get(f"{base}/events", params={"url_id": url["id"]}, verify=verify, timeout=10).json()
    request_ids = {event["details"].get("request_id") for event in events if event["event_type"] == "click"}
    assert request_ids == {first_id, second_id}

    # Deactivated: at once, through the edge too.
    assert api.put(f"{base}/urls/{url['id']}", json={"is_active": False}, verify=verify, timeout=10).status_code == 200
    gone, gone_id = follow(address, code)
    assert gone.status_code == 404 and gone.headers["content-type"].startswith("application/json")
    assert edge_line(host, gone_id)["edge"] in ("tombstone", "negative", "miss")


def test_the_edge_redis_user_runs_its_script_and_nothing_else(host) -> None:
    secret = ROOT / "ansible" / ".secrets" / "redis_edge_password"
    if not secret.exists():
        pytest.skip("not a lab inventory: the edge's Redis password is in Vault")
    # The cache host's Redis: on loopback when it is this host, else across the network (a
    # cluster's lb host, which has no redis-cli: the conftest's client speaks RESP itself).
    cache = hosts_of("cache")[0]
    address = "127.0.0.1" if cache == host.backend.get_hostname() else address_of(cache)
    password = secret.read_text().strip()
    assert redis_on(host, address, "shortener_edge", password, "GET shortener:url:none") == ""
    for refused in ("SET shortener:url:x y", "DEL shortener:clicks", "KEYS *", "FLUSHALL", "GET other:key"):
        assert "NOPERM" in redis_on(host, address, "shortener_edge", password, refused), refused
