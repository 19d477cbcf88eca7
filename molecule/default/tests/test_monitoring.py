"""Verify the monitoring of a host in the `monitoring` group: targets, rules, dashboards,
paging to the Discord sink, and logs from a browser.

Molecule's verify step runs it with the scenario's inventory (MOLECULE_INVENTORY_FILE). By
hand, against any lab host converged with site.yml and monitoring.yml:

    pytest -v -s molecule/default/tests/test_monitoring.py \
        --hosts=ansible://h6-t --ansible-inventory=/tmp/h6/inventory

The same module verifies one all-in-one host (scenario default) and the five-host cluster
(scenario cluster links it): the app, db and lb hosts are looked up by group in the
inventory, so the instances stopped are those of every app host, PostgreSQL is stopped on
the db host, and the logs are read through the lb host's console.

The paging tests stop every app instance, then PostgreSQL, and put them back; each one
leaves the service healthy (GET /health 200 through Nginx, no ShortenerDown firing) before
it ends, because other verify tests run after these.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import uuid
from pathlib import Path

import pytest
import requests
import testinfra
import yaml
from conftest import admin_api_key

from labkit.hosts import hosts_of
from labkit.probes import port_open

if "MOLECULE_INVENTORY_FILE" in os.environ:
    testinfra_hosts = hosts_of("monitoring")

ROOT = Path(__file__).resolve().parents[3]
RULE_FILES = sorted((ROOT / "ansible/roles/prometheus/files/rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "ansible/roles/grafana/files/dashboards").glob("*.json"))
SECRETS = ROOT / "ansible" / ".secrets"
INSTANCES = (8001, 8002, 8003)
PROMETHEUS = "http://127.0.0.1:9090"
SINK = "http://127.0.0.1:9095"
CONSOLE_PORT = 8443  # HTTPS only, from the admin networks (the lab bridge)
# The acceptance bar: a page within 2 minutes of the outage.
PAGE_WITHIN_SECONDS = 120


def hosts_in(host, group: str) -> list:
    """The testinfra hosts of an inventory group, reached through Ansible like `host`."""
    inventory = host.backend.ansible_inventory
    return [testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory) for name in names_in(host, group)]


def names_in(host, group: str) -> list[str]:
    return host.backend.ansible_runner.get_hosts(group)


def address_of(host, name: str) -> str:
    return host.backend.ansible_runner.get_variables(name)["ansible_host"]


def run_on_group(host, group: str, command: str) -> None:
    members = hosts_in(host, group)
    assert members, f"no host in group {group}"
    for member in members:
        result = member.run(command)
        if result.rc != 0:
            # what systemd says of it, in the test's output: the hosts are gone after the run
            print(member.run("systemctl status --no-pager -n 40 '*postgresql*' 'shortener*' 2>&1").stdout)
        assert result.rc == 0, f"{command}: {result.stderr}"


def start_instances(host, units: str) -> None:
    """Starts the instances on every app host. A start job that fails (seen once in a fresh-clone
    run: shortener@8002 failed at once when three started together, cause not found) is reported
    with the unit's journal, then Restart=always must bring it back within a minute by itself."""
    for member in hosts_in(host, "app"):
        result = member.run(f"systemctl start {units}")
        if result.rc == 0:
            continue
        print(f"WARNING: systemctl start failed: {result.stderr}")
        print(member.run("journalctl --no-pager -n 60 -u 'shortener@*' --since '-3min' 2>&1").stdout)

        def all_active(member=member) -> bool:
            return member.run(f"systemctl is-active --quiet {units}").rc == 0

        wait_until(all_active, 60, "Restart=always brings every instance back")


@pytest.fixture(scope="module")
def address(host) -> str:
    """Where users reach the service: the (first) load balancer."""
    return address_of(host, names_in(host, "lb")[0])


@pytest.fixture(scope="module")
def app_hostname(host) -> str:
    return names_in(host, "app")[0]


def get_json(host, url: str, **params: str) -> object:
    args = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
    return json.loads(host.check_output(f"curl -sf -G {args} {shlex.quote(url)}"))


def query(host, expr: str) -> list[dict]:
    answer = get_json(host, f"{PROMETHEUS}/api/v1/query", query=expr)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def host_time(host) -> float:
    return float(host.check_output("date +%s.%N"))


def messages_since(host, since: float) -> list[dict]:
    return get_json(host, f"{SINK}/messages", since=str(since))


def title(message: dict) -> str:
    return " ".join(embed.get("title", "") for embed in message["embeds"])


def wait_for_message(host, since: float, pattern: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in messages_since(host, since):
            if re.search(pattern, title(message)):
                return message
        time.sleep(1)
    seen = [title(m) for m in messages_since(host, since)]
    raise AssertionError(f"no message matching {pattern!r} within {timeout} s; got {seen}")


def firing(host, alertname: str) -> bool:
    return bool(query(host, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}'))


def wait_until(check, timeout: float, what: str, interval: float = 2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def healthy(address: str) -> bool:
    try:
        return requests.get(f"http://{address}/health", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def wait_service_healthy(host, address: str) -> None:
    """The service answers through Nginx, the probe says so and no outage alert is firing."""
    wait_until(lambda: healthy(address), 180, "GET /health through Nginx answers 200")
    wait_until(
        lambda: not firing(host, "ShortenerDown") and not firing(host, "PostgresqlDown"),
        180,
        "ShortenerDown and PostgresqlDown are no longer firing",
    )


def traffic(address: str) -> None:
    base = f"http://{address}"
    tag = uuid.uuid4().hex[:8]
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {admin_api_key()}"
    user = api.post(f"{base}/users", json={"username": f"m{tag}", "email": f"m{tag}@example.com"}, timeout=5)
    url = api.post(
        f"{base}/urls", json={"original_url": f"https://example.com/{tag}", "user_id": user.json()["id"]}, timeout=5
    )
    code = url.json()["short_code"]
    for _ in range(20):
        requests.get(f"{base}/{code}", allow_redirects=False, timeout=5)
    requests.get(f"{base}/nosuchcode{tag}", timeout=5)
    api.get(f"{base}/events", params={"url_id": url.json()["id"]}, timeout=5)
    # Both kinds of 429 of the overview's limit panels: 20 anonymous creations in a row pass
    # Nginx's bucket (burst 10 at 1/s) for the first 11, of which the service's anonymous
    # budget (6 a minute) refuses 5; Nginx refuses the rest itself.
    with requests.Session() as anonymous:
        burst = [
            anonymous.post(f"{base}/urls", json={"original_url": f"https://example.com/{tag}/{i}"}, timeout=5)
            for i in range(20)
        ]
    assert 429 in {answer.status_code for answer in burst}, [answer.status_code for answer in burst]


# --- Prometheus: targets and rules ------------------------------------------------------------


def test_every_target_is_up(host):
    def all_up() -> bool:
        targets = get_json(host, f"{PROMETHEUS}/api/v1/targets", state="active")["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    try:
        wait_until(all_up, 90, "every target up")
    finally:
        targets = get_json(host, f"{PROMETHEUS}/api/v1/targets", state="active")["data"]["activeTargets"]
        for target in targets:
            labels = target["labels"]
            print(f"{labels['job']:24} {labels['instance']:32} {target['health']} {target['lastError']}")
    jobs = {t["labels"]["job"] for t in targets}
    assert {"shortener", "shortener_clickworker", "node", "blackbox_http", "alertmanager", "mtail"} <= jobs
    # each instance scraped directly, on every app host, and every host's node exporter
    assert sum(t["labels"]["job"] == "shortener" for t in targets) == len(INSTANCES) * len(names_in(host, "app"))
    assert sum(t["labels"]["job"] == "node" for t in targets) == len(names_in(host, "all"))


def test_every_rule_is_loaded(host):
    expected = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            expected |= {rule.get("alert") or rule.get("record") for rule in group["rules"]}
    groups = get_json(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == expected
    assert [name for name, rule in loaded.items() if rule["health"] == "err"] == []
    for name, rule in loaded.items():
        if rule["type"] == "alerting":
            assert rule["annotations"]["runbook_url"].endswith(f"/{name}.md")
            assert "[[" not in rule["annotations"]["runbook_url"]


def test_every_dashboard_query_returns_data(host, address):
    traffic(address)
    # two scrapes of the instances after the traffic, so that rates see it
    time.sleep(35)
    empty = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "2m").replace("$instance", ".*")
                if not query(host, expr):
                    empty.append(f"{path.stem} / {panel['title']}: {expr}")
    assert empty == []


# --- Paging: the sink receives what Alertmanager sends to Discord ---------------------------


def test_all_instances_stopped_pages_within_two_minutes(host, address):
    wait_service_healthy(host, address)
    units = " ".join(f"shortener@{port}.service" for port in INSTANCES)
    stopped_at = host_time(host)
    run_on_group(host, "app", f"systemctl stop {units}")
    try:
        page = wait_for_message(host, stopped_at, r"^\[FIRING:\d+\] ShortenerDown \(critical\)", 300)
        paged_after = page["received_at"] - stopped_at
        print(f"\nShortenerDown reached the sink {paged_after:.1f} s after all instances stopped: {title(page)}")
        assert page["webhook_id"] == "critical"
        assert "runbooks/ShortenerDown.md" in page["embeds"][0]["description"]
    finally:
        started_at = host_time(host)
        start_instances(host, units)
    resolved = wait_for_message(host, started_at, r"^\[RESOLVED\] ShortenerDown", 300)
    print(f"the resolved message followed {resolved['received_at'] - started_at:.1f} s after the start")
    wait_service_healthy(host, address)
    assert paged_after < PAGE_WITHIN_SECONDS


def test_postgresql_stopped_pages_postgresql_down(host, address):
    wait_service_healthy(host, address)
    stopped_at = host_time(host)
    run_on_group(host, "db", "systemctl stop postgresql@15-main.service")
    try:
        page = wait_for_message(host, stopped_at, r"^\[FIRING:\d+\] PostgresqlDown \(critical\)", 300)
        print(f"\nPostgresqlDown reached the sink {page['received_at'] - stopped_at:.1f} s after PostgreSQL stopped")
        others = sorted({title(m) for m in messages_since(host, stopped_at)} - {title(page)})
        print(f"other messages meanwhile: {others}")
    finally:
        run_on_group(host, "db", "systemctl start postgresql@15-main.service")
    wait_service_healthy(host, address)


# --- Logs from a browser ----------------------------------------------------------------------


def console_password() -> str:
    path = SECRETS / "journal_gateway_password"
    if not path.exists():
        pytest.skip(f"{path} not found: the console's password of this inventory is in its Vault")
    return path.read_text().strip()


def lab_ca() -> str:
    """The lab CA's certificate (nginx role, lab_ca mode), which the console's certificate chains to."""
    path = SECRETS / "lab_ca" / "ca.crt"
    if not path.exists():
        pytest.skip(f"{path} not found: this inventory's certificates are not the lab CA's")
    return str(path)


def test_logs_of_one_instance_for_the_last_10_minutes(host, address, app_hostname):
    # An instance behind Nginx logs only its 5xx (SHORTENER_ACCESS_LOG=errors), so one that
    # started more than 10 minutes ago may have no line in the window: a reload (Gunicorn's
    # graceful HUP) makes it log its new workers' start.
    hosts_in(host, "app")[0].check_output("systemctl reload shortener@8001.service")
    time.sleep(2)
    # a journal cursor holding only the time: microseconds, in hexadecimal
    since = int((time.time() - 600) * 1_000_000)
    url = f"https://{address}:{CONSOLE_PORT}/logs/{app_hostname}/entries"
    params = {"_SYSTEMD_UNIT": "shortener@8001.service"}
    assert requests.get(url, params=params, timeout=10, verify=lab_ca()).status_code == 401
    response = requests.get(
        url,
        params=params,
        headers={"Range": f"entries=t={since:x}", "Accept": "application/json"},
        auth=("operator", console_password()),
        timeout=30,
        verify=lab_ca(),
    )
    assert response.status_code == 200
    entries = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert entries, "no journal entries of shortener@8001 in the last 10 minutes"
    assert {entry["_SYSTEMD_UNIT"] for entry in entries} == {"shortener@8001.service"}
    assert min(int(entry["__REALTIME_TIMESTAMP"]) for entry in entries) >= since
    page = requests.get(
        f"https://{address}:{CONSOLE_PORT}/logs/", auth=("operator", console_password()), timeout=10, verify=lab_ca()
    )
    assert page.status_code == 200 and "Range" in page.text


def test_monitoring_ports_are_not_reachable_from_outside(host):
    # Prometheus, Alertmanager, the sink, the exporters, the journal gateway itself, on every host
    ports = (3903, 9090, 9093, 9095, 9100, 9101, 9113, 9115, 9121, 9127, 9187, 19531)
    addresses = [address_of(host, name) for name in names_in(host, "all")]
    assert [(a, p) for a in addresses for p in ports if port_open(a, p)] == []


# --- Local APIs: not for every local user -----------------------------------------------------

AS_NOBODY = "setpriv --reuid=nobody --regid=nogroup --clear-groups"
GATEWAY_SOCKET = "/run/systemd-journal-gatewayd.sock"


def test_alertmanager_api_needs_prometheus_password(host):
    """Alertmanager's API refuses a local user without the password (401), answers with it, and
    Prometheus (which has it) both scrapes Alertmanager and has it as its active Alertmanager."""
    url = "http://127.0.0.1:9093/api/v2/status"
    refused = host.check_output(f"{AS_NOBODY} curl -s -o /dev/null -w '%{{http_code}}' {url}")
    assert refused == "401"
    for path in ("/-/healthy", "/api/v2/silences", "/api/v2/alerts"):
        assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:9093{path}") == "401", path
    secret = SECRETS / "alertmanager_web_password"
    if secret.exists():
        # printf is the shell's own: the password is in no process's command line
        config = shlex.quote(f'user = "prometheus:{secret.read_text().strip()}"')
        status = host.check_output(f"printf '%s\\n' {config} | curl -s -o /dev/null -w '%{{http_code}}' -K - {url}")
        assert status == "200"
    active = get_json(host, f"{PROMETHEUS}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://127.0.0.1:9093/api/v2/alerts"]
    assert query(host, 'up{job="alertmanager"} == 1'), "Prometheus cannot scrape Alertmanager"
    errors = query(host, "sum(increase(prometheus_notifications_errors_total[10m])) > 0")
    assert errors == [], f"Prometheus failed to send alerts: {errors}"


def test_journal_gateway_only_for_nginx(host):
    """On a host whose console is its own, the journal gateway is a Unix socket only Nginx's
    workers may use: a local user is refused, www-data is served, nothing listens on TCP."""
    for lb in hosts_in(host, "lb"):
        listen = lb.ansible.get_variables().get("journal_gateway_listen_address", "")
        if listen:
            continue  # read by another host's console over TCP: the cluster's test_between_hosts.py
        curl = f"curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {GATEWAY_SOCKET} http://gateway/browse"
        refused = lb.run(f"{AS_NOBODY} {curl}")
        assert refused.rc == 7 and refused.stdout == "000", (refused.rc, refused.stdout, refused.stderr)
        served = lb.check_output(f"setpriv --reuid=www-data --regid=www-data --init-groups {curl}")
        assert served == "200"
        assert lb.run("ss -Hltn 'sport = :19531'").stdout.strip() == ""
