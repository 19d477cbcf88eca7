"""Verify the edge of the deployed host: JSON for every error Nginx or Gunicorn would make
itself, abuse limits per client address, HTTPS with the lab CA, what answers from outside.

Runs in Molecule's verify step (testinfra over Molecule's Ansible inventory), from the machine
running Molecule to the host's address on the lab bridge, the way a client would. Hostile
requests go through raw sockets: `requests` would normalise them into harmless ones.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
import requests

from labkit.hosts import hosts_of
from labkit.probes import port_open
from labkit.rawhttp import Answer, request, send_raw
from labkit.traffic import Traffic

testinfra_hosts = hosts_of("lb")

ROOT = Path(__file__).resolve().parents[3]
LAB_CA = ROOT / "ansible" / ".secrets" / "lab_ca" / "ca.crt"
CONSOLE_PORT = 8443
# The nginx role's defaults (anonymous creation: 1 r/s, burst 10).
CREATE_BURST = 10
CREATE_RATE = 1.0


@pytest.fixture(scope="module")
def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def ca() -> str:
    if not LAB_CA.exists():
        pytest.skip(f"{LAB_CA} not found: this inventory does not use the lab CA")
    return str(LAB_CA)


HOSTILE = {
    "nul in the path": (request("GET /%00 HTTP/1.1", "Host: x", "Connection: close"), {400}),
    "connect": (request("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"), {400, 405}),
    "connect to a path": (request("CONNECT / HTTP/1.1", "Host: x", "Connection: close"), {405}),
    "unknown method": (request("FOO / HTTP/1.1", "Host: x", "Connection: close"), {405}),
    "two-letter method": (request("AB /health HTTP/1.1", "Host: x", "Connection: close"), {405}),
    "long method": (request("X" * 40 + " /health HTTP/1.1", "Host: x", "Connection: close"), {405}),
    "lower-case method": (request("get /health HTTP/1.1", "Host: x", "Connection: close"), {400}),
    "9,000-character path": (request(f"GET /{'a' * 9000} HTTP/1.1", "Host: x", "Connection: close"), {414}),
    "5,000-character path": (request(f"GET /{'a' * 5000} HTTP/1.1", "Host: x", "Connection: close"), {414}),
    "garbage request line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", {400}),
    "no version": (request("GET / HTTP/9.9", "Host: x"), {400, 505}),
    "no host": (request("GET /health HTTP/1.1", "Connection: close"), {400}),
    "bad content-length": (
        request("POST /urls HTTP/1.1", "Host: x", "Content-Length: abc", "Connection: close"),
        {400},
    ),
    "two content-lengths": (
        request("POST /urls HTTP/1.1", "Host: x", "Content-Length: 1", "Content-Length: 2", "Connection: close"),
        {400},
    ),
    "unknown transfer-encoding": (
        request("POST /urls HTTP/1.1", "Host: x", "Transfer-Encoding: gzip", "Connection: close"),
        {400, 501},
    ),
    "one huge header": (
        request("GET /health HTTP/1.1", "Host: x", f"X-Big: {'b' * 10000}", "Connection: close"),
        {431},
    ),
    "header flood": (
        request("GET /health HTTP/1.1", "Host: x", *(f"X-Flood-{i}: {'f' * 20}" for i in range(2000))),
        {431},
    ),
    # Not a URI: Gunicorn answered these with an HTML page echoing the request line.
    "latin-1 byte in the path": (request("GET /caf\xe9 HTTP/1.1", "Host: x", "Connection: close"), {400}),
    "latin-1 byte in a link's query": (request("GET /abc?q=\xe9 HTTP/1.1", "Host: x", "Connection: close"), {400}),
    "UTF-8 bytes in the path": (request("GET /caf\xc3\xa9 HTTP/1.1", "Host: x", "Connection: close"), {400}),
    "folded header": (request("GET /health HTTP/1.1", "Host: x", "X-A: 1", " folded", "Connection: close"), {400}),
    "body too large": (
        request("POST /urls HTTP/1.1", "Host: x", "Content-Type: application/json", "Content-Length: 50000000"),
        {413},
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_gets_a_json_error(address, name):
    data, statuses = HOSTILE[name]
    answer = Answer(send_raw(address, data))
    assert answer.status in statuses, (name, answer.raw[:300])
    assert 400 <= answer.status < 600
    assert "error" in answer.json(), name
    assert answer.headers.get("x-content-type-options") == "nosniff"


def test_what_nginx_passes_on_gunicorn_accepts(address):
    """Below Nginx's limits, Gunicorn answers through the app (JSON), never with its own page:
    a 3,000-character path, 300 headers, a long X-Forwarded-For."""
    forwarded = f"X-Forwarded-For: {'1.2.3.4, ' * 400}5.6.7.8"
    for data, status in (
        (request(f"GET /{'a' * 3000} HTTP/1.1", "Host: x", "Connection: close"), 404),
        (request("GET /health HTTP/1.1", "Host: x", *(f"X-H{i}: v" for i in range(300)), "Connection: close"), 200),
        (request("GET /health HTTP/1.1", "Host: x", forwarded, "Connection: close"), 200),
    ):
        answer = Answer(send_raw(address, data))
        assert answer.status == status, answer.raw[:300]
        answer.json()


def test_plain_http_on_the_https_port_is_json(address):
    answer = Answer(send_raw(address, request("GET /health HTTP/1.1", "Host: x", "Connection: close"), port=443))
    assert answer.status == 400
    assert "HTTPS" in answer.json()["error"]


def test_stalled_body_is_dropped_without_html(address):
    """A body that stops coming: after client_body_timeout, 408 JSON (or a closed connection)."""
    data = request("POST /urls HTTP/1.1", "Host: x", "Content-Type: application/json", "Content-Length: 100")
    raw = send_raw(address, data + b'{"original_url": ', wait=25)
    if raw:
        answer = Answer(raw)
        assert answer.status == 408
        answer.json()


def test_stalled_head_is_dropped_without_html(address):
    """A head that never ends (slowloris): closed after client_header_timeout, no HTML page."""
    started = time.monotonic()
    raw = send_raw(address, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n", wait=25)
    assert time.monotonic() - started < 20, "the connection stayed open"
    assert b"<html" not in raw.lower()


def test_security_headers(address, ca):
    for response in (
        requests.get(f"http://{address}/health", timeout=5),
        requests.get(f"https://{address}/no-such-code", timeout=5, verify=ca),
        requests.get(f"http://{address}/nginx_status", timeout=5),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    page = requests.get(f"http://{address}/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    # The page's own policy (its style by hash) and no second one from Nginx.
    assert "style-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert page.raw.headers.getlist("Content-Security-Policy") == [page.headers["Content-Security-Policy"]]


def test_creation_burst_is_limited_while_visitors_are_not(address, api):
    base = f"http://{address}"
    # The visitor's link is made with the admin key, outside the anonymous budgets under test.
    visitor_link = api.post(f"{base}/urls", json={"original_url": "https://example.com/visitor"}, timeout=5)
    assert visitor_link.status_code == 201, visitor_link.text
    code = visitor_link.json()["short_code"]

    # A visitor's 20 redirects a second go on while the burst of creations is limited.
    with Traffic(f"{base}/{code}", pause=0.05, keep_alive=True) as visitor:
        tag = uuid.uuid4().hex[:8]
        started = time.monotonic()
        with requests.Session() as session:
            answers = [
                session.post(f"{base}/urls", json={"original_url": f"https://example.com/{tag}/{i}"}, timeout=5)
                for i in range(40)
            ]
        elapsed = time.monotonic() - started
        time.sleep(1)

    created = [a for a in answers if a.status_code == 201]
    limited = [a for a in answers if a.status_code == 429]
    assert len(created) + len(limited) == len(answers), {a.status_code for a in answers}
    assert len(created) <= CREATE_BURST + 1 + elapsed * CREATE_RATE + 1
    assert limited, "40 creations in a row were never limited"
    for answer in limited:
        # Nginx's per-address bucket, or the service's anonymous-creation budget per address
        # (6 a minute by default), whichever this address exhausts first: JSON either way.
        assert answer.json()["error"].startswith("Too many requests"), answer.text
        assert int(answer.headers["Retry-After"]) >= 1
    # 40 in about a second overrun Nginx's bucket (burst 10 at 1/s) whatever the service did.
    assert any(answer.json() == {"error": "Too many requests"} for answer in limited), "Nginx never limited"
    assert len(visitor.answers) >= 10
    assert set(visitor.answers) == {302}, f"a visitor was limited: {visitor.counts()}"
    # Leave the bucket full for the tests after this one.
    time.sleep(CREATE_BURST / CREATE_RATE)


def test_https_with_the_lab_certificate(address, ca):
    response = requests.get(f"https://{address}/health", timeout=5, verify=ca)
    assert response.status_code == 200 and response.json()["database"] == "ok"
    # HTTP/2 offered, TLS 1.2 at the least, no session tickets.
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((address, 443), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(ca)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.options |= ssl.OP_NO_TICKET
    with (
        socket.create_connection((address, 443), timeout=5) as raw,
        old.wrap_socket(raw, server_hostname=address) as tls,
    ):
        assert tls.version() == "TLSv1.2"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{address}/health", timeout=5, verify=True)  # the system's CAs: not ours


def test_only_ssh_http_https_and_the_console_answer_from_outside(address):
    candidates = (22, 80, 443, 8080, 8443, 5432, 6432, 6379, 8001, 8002, 8003, 9090, 9093, 9095, 9100, 9101)
    candidates += (3903, 9113, 9115, 9121, 9127, 9187, 19531, 19532)
    # The console's port is open here because this machine is on the lab bridge, the lab's admin network.
    assert [port for port in candidates if port_open(address, port)] == [22, 80, 443, CONSOLE_PORT]


def test_console_is_https_only_and_for_the_admin_network(host, address, ca):
    # Plain HTTP on the console's port: sent to HTTPS before any password is asked.
    plain = request("GET /logs/ HTTP/1.1", "Host: x", "Connection: close")
    answer = Answer(send_raw(address, plain, port=CONSOLE_PORT))
    assert answer.status == 308 and answer.headers["location"].startswith("https://")
    assert requests.get(f"https://{address}:{CONSOLE_PORT}/logs/", timeout=5, verify=ca).status_code == 401
    # From an address outside the allow-list (one added to the host's loopback for the test,
    # which the firewall lets through as local traffic): Nginx refuses it.
    outsider = "192.0.2.77"
    host.run_expect([0], f"ip addr add {outsider}/32 dev lo")
    try:
        status = host.check_output(
            f"curl -sk --interface {outsider} -o /dev/null -w '%{{http_code}}' https://{address}:{CONSOLE_PORT}/logs/"
        )
    finally:
        host.run(f"ip addr del {outsider}/32 dev lo")
    assert status == "403"
    rules = host.check_output("nft list table inet common_filter")
    admins = host.ansible.get_variables()["site_admin_networks"]  # the inventory's, not the lab's by name
    assert f"tcp dport {CONSOLE_PORT} accept" in rules and admins and all(net in rules for net in admins)
    assert "8080" not in rules


def test_metrics_through_nginx_only_for_monitoring(host, address):
    response = requests.get(f"http://{address}/metrics", timeout=5)
    assert response.status_code == 404 and response.json() == {"error": "Not found"}
    # From the host itself (loopback: the monitoring host of the all-in-one lab).
    assert "shortener_" in host.check_output("curl -sf http://127.0.0.1/metrics")


def test_limited_requests_are_in_the_access_log(host):
    """Nginx's 429s are in the journal (JSON access log), where the console reads them."""
    count = host.check_output(
        "journalctl -q -t nginx_access --since '-10min' -o cat | grep -c '\"status\":429' || true"
    )
    assert int(count or 0) > 0, "no 429 in the access log of the last 10 minutes"
