"""Verify that Nginx's answers are counted: mtail over the deployed host's access log (every
line, through a rotation, whatever bytes a client sent), the metrics the SLO and the alerts
read. Runs in Molecule's verify step after test_edge.py, whose creation burst it counts."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest
import requests

from labkit.hosts import hosts_of
from labkit.rawhttp import Answer, request, send_raw

testinfra_hosts = hosts_of("lb")


@pytest.fixture(scope="module")
def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


MTAIL = "http://127.0.0.1:3903/metrics"
SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def mtail_metrics(host) -> dict[str, float]:
    """mtail's counters on the lb host, as {'name{labels}': value} (labels sorted by mtail)."""
    samples = {}
    for line in host.check_output(f"curl -sf {MTAIL}").splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1).startswith("nginx_access_"):
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_nginx_answers_are_counted_by_mtail(host, address):
    """Nginx's own answers reach Prometheus through mtail: its 429s by limit zone (the burst
    above), the errors it makes itself apart from the instances' answers, and a duration
    histogram; every access log line parses."""
    before = mtail_metrics(host)
    for _ in range(3):
        assert Answer(send_raw(address, request("BREW /health HTTP/1.1", "Host: x", "Connection: close"))).status == 405
    assert requests.get(f"http://{address}/health", timeout=5).status_code == 200
    deadline = time.monotonic() + 10
    # /health is monitoring's route ("probe"), outside the SLO's requests.
    key405 = 'nginx_access_requests_total{origin="nginx",route="probe",status="405",status_class="4xx"}'
    key200 = 'nginx_access_requests_total{origin="upstream",route="probe",status="200",status_class="2xx"}'
    while True:
        after = mtail_metrics(host)
        grown = after.get(key405, 0) - before.get(key405, 0) >= 3 and after.get(key200, 0) > before.get(key200, 0)
        if grown or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert after.get(key405, 0) - before.get(key405, 0) >= 3, after
    assert after.get(key200, 0) > before.get(key200, 0), after
    assert after.get('nginx_access_limited_total{zone="create"}', 0) > 0, "the creation burst's 429s are not counted"
    assert after.get('nginx_access_requests_total{origin="nginx",route="api",status="429",status_class="4xx"}', 0) > 0
    assert after.get('nginx_access_request_duration_seconds_count{origin="upstream",route="probe"}', 0) > 0
    assert after.get("nginx_access_unparsed_lines_total", 0) == 0, "log format and mtail program disagree"
    # mtail reads the access log as a member of adm: a local user outside it may not.
    refused = host.run(f"setpriv --reuid=nobody --regid=nogroup --clear-groups head -c1 {ACCESS_LOG}")
    assert refused.rc != 0 and "Permission denied" in refused.stderr, refused.stderr


def test_text_that_is_not_utf8_is_logged_as_such_and_mtail_counts_on(host, address):
    """A stranger's bytes that are not UTF-8 (in the path, a Referer, a User-Agent) reach the
    access log as "(not UTF-8)": the file stays UTF-8, and mtail counts every line after them
    (one such line once stopped it for good, and every Nginx metric with it)."""
    marker = uuid.uuid4().hex
    before = mtail_metrics(host)
    start = int(host.check_output(f"stat -c %s {ACCESS_LOG}"))
    assert Answer(send_raw(address, request("GET /caf\xe9 HTTP/1.1", "Host: x", "Connection: close"))).json()
    for header in ("Referer: https://r/caf\xe9", "User-Agent: caf\xe9 \xc3"):
        sent = request("GET /health HTTP/1.1", "Host: x", f"X-Request-ID: {marker}", header, "Connection: close")
        assert Answer(send_raw(address, sent)).status == 200
    brew(address, 3)
    deadline = time.monotonic() + 15
    while mtail_metrics(host).get(KEY405, 0) - before.get(KEY405, 0) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert mtail_metrics(host).get(KEY405, 0) - before.get(KEY405, 0) >= 3, "mtail stopped counting"
    recent = host.check_output(f"tail -c +{start + 1} {ACCESS_LOG} | base64 -w0")
    lines = [json.loads(text) for text in base64.b64decode(recent).decode("utf-8").splitlines()]
    ours = [entry for entry in lines if entry["request_id"] == marker]
    # Each Nginx worker writes its own buffer: the two lines may come in either order.
    assert sorted((e["referer"], e["user_agent"]) for e in ours) == [("", "(not UTF-8)"), ("(not UTF-8)", "")], ours
    assert any(e["uri"] == "(not UTF-8)" and e["status"] == 400 for e in lines)


ACCESS_LOG = "/var/log/nginx/access.log"
KEY405 = 'nginx_access_requests_total{origin="nginx",route="probe",status="405",status_class="4xx"}'


def brew(address: str, count: int) -> None:
    """`count` requests only Nginx answers, 405, each a line no other traffic makes (KEY405)."""
    for _ in range(count):
        assert Answer(send_raw(address, request("BREW /health HTTP/1.1", "Host: x", "Connection: close"))).status == 405


def test_mtail_counts_every_line_through_a_rotation(host, address):
    """mtail tails the buffered access log file: every line is counted, those Nginx's workers
    still held in their buffers when logrotate renamed the file included (they write them to
    the old file when USR1 makes them reopen), and those written to the new file after."""
    assert host.file(ACCESS_LOG).user == "www-data" and host.file(ACCESS_LOG).group == "adm"
    assert host.file(ACCESS_LOG).mode == 0o640
    assert "adm" in host.user("mtail").groups
    before = mtail_metrics(host).get(KEY405, 0)
    brew(address, 30)
    # At once, while the 30 lines are still in the workers' buffers (flushed every second).
    host.run_expect([0], "logrotate --force /etc/logrotate.d/nginx")
    brew(address, 30)
    deadline = time.monotonic() + 15
    while (counted := mtail_metrics(host).get(KEY405, 0) - before) < 60 and time.monotonic() < deadline:
        time.sleep(1)
    assert counted == 60, f"mtail counted {counted} of 60 lines across the rotation"
    # Both halves are in the files: the old one (renamed) and the new one.
    assert host.file(f"{ACCESS_LOG}.1").exists
    assert int(host.check_output(f'grep -c \'"method":"BREW"\' {ACCESS_LOG} || true') or 0) >= 30
    assert host.service("nginx").is_running
    # The master reopened the new file as its own: a reload after the rotation still works.
    host.run_expect([0], "systemctl reload nginx")
