"""mtail's program for Nginx's access log, run by the real mtail on lines in the real format.

The lines are made from the nginx role's own log format (the `access_log_fields` block of
its nginx.conf template, with Nginx's variables filled in as Nginx would fill them), so the
program and the format are checked against each other here, without a lab host. The checks:
who answered (an instance, the edge, Nginx itself), which route (short link, monitoring
probe, the rest), the limits' zones, the edge's results with its breaker, and no line left
unparsed. mtail is Debian's package (the exporters role installs the same on lb hosts); the
test skips where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "ansible" / "roles" / "nginx" / "templates" / "nginx.conf.j2"
EXPORTERS = ROOT / "ansible" / "roles" / "exporters"
PROGRAM = EXPORTERS / "templates" / "nginx-access.mtail.j2"
SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")

pytestmark = pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed")


def log_format() -> str:
    """The role's JSON log format: the quoted pieces of its access_log_fields block, joined."""
    text = NGINX_CONF.read_text()
    block = re.search(r"\{% set access_log_fields %\}(.*?)\{%- endset %\}", text, re.S)
    assert block, "no access_log_fields block in nginx.conf.j2"
    return "".join(re.findall(r"'([^']*)'", block.group(1)))


def line(**fields: str | int | float) -> str:
    """One access log line as Nginx writes it: every variable of the format filled in."""
    values = {
        "time_iso8601": "2026-11-30T13:00:00+00:00",
        "shortener_request_id": "0123456789abcdef0123456789abcdef",
        "remote_addr": "10.0.0.9",
        "shortener_method": "GET",
        "shortener_log_uri": "/abc",
        "server_protocol": "HTTP/1.1",
        "status": 302,
        "body_bytes_sent": 0,
        "request_time": "0.001",
        "upstream_addr": "",
        "upstream_status": "",
        "upstream_response_time": "",
        "upstream_connect_time": "",
        "upstream_header_time": "",
        "shortener_limit_refused": "",
        "shortener_log_referer": "",
        "shortener_log_user_agent": "curl/7.88.1",
        "shortener_edge": "",
        "shortener_edge_breaker": "",
    }
    values.update(fields)

    def fill(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        # escape=json: what a JSON string holds, without its quotes.
        return json.dumps(value)[1:-1] if isinstance(value, str) else str(value)

    return re.sub(r"\$(\w+)", fill, log_format())


def upstream(status: int, seconds: str = "0.020", uri: str = "/urls", **fields: str | int) -> str:
    """An answer an instance sent."""
    return line(
        shortener_log_uri=uri,
        status=status,
        request_time=seconds,
        upstream_addr="127.0.0.1:8001",
        upstream_status=str(status),
        upstream_response_time=seconds,
        upstream_connect_time="0.000",
        upstream_header_time=seconds,
        **fields,
    )


def run_mtail(tmp_path: Path, lines: list[str]) -> dict[tuple[str, frozenset], float]:
    defaults = yaml.safe_load((EXPORTERS / "defaults" / "main.yml").read_text())
    program = jinja2.Template(PROGRAM.read_text()).render(
        ansible_managed="test", exporters_mtail_duration_buckets=defaults["exporters_mtail_duration_buckets"]
    )
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "nginx-access.mtail").write_text(program)
    log = tmp_path / "access.log"
    log.write_text("".join(f"{text}\n" for text in lines))
    result = subprocess.run(
        [
            "mtail",
            "--one_shot",
            "--one_shot_format=prometheus",
            "--emit_prog_label=false",
            "--logtostderr",
            f"--progs={progs}",
            f"--logs={log}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    samples: dict[tuple[str, frozenset], float] = {}
    for text in result.stdout.splitlines():
        match = SAMPLE.match(text)
        if match and match.group(1).startswith("nginx_access_"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and want <= have)


def test_every_answer_is_counted_by_who_answered_and_route(tmp_path):
    lines = [
        # Three edge hits, one with a breaker that had been open before: it is closed now.
        *[line(shortener_edge="hit", shortener_edge_breaker="closed") for _ in range(3)],
        # A miss the instance answered (302 after PostgreSQL).
        upstream(302, uri="/abc", shortener_edge="miss", shortener_edge_breaker="closed"),
        # The edge's Redis call failed (breaker now open); an instance answered.
        upstream(302, uri="/abc", shortener_edge="error", shortener_edge_breaker="open"),
        # A short link while no instance answers: Nginx's own 502. Its JSON error page is an
        # internal redirect, which runs the server's `set $shortener_edge ""` again: the line
        # has no edge field (seen on the lab host), so it counts as route "api".
        line(
            shortener_log_uri="/abd",
            status=502,
            upstream_addr="127.0.0.1:8001",
            upstream_status="502",
            upstream_header_time="-",
        ),
        # The breaker open: bypass, an instance answered.
        upstream(302, uri="/abc", shortener_edge="bypass", shortener_edge_breaker="open"),
        # HEAD: bypassed without asking Redis, breaker not consulted.
        upstream(302, uri="/abc", shortener_method="HEAD", shortener_edge="bypass"),
        # The probe through Nginx (it goes through the short-link location: a reserved name).
        upstream(200, uri="/health", shortener_edge="bypass"),
        upstream(503, uri="/health?x=1", shortener_edge="bypass"),
        # API: an instance's 201 and 500, Nginx's 429 of the create limit and its 405.
        upstream(201),
        upstream(500, uri="/users"),
        line(shortener_log_uri="/urls", status=429, shortener_limit_refused="create"),
        line(shortener_log_uri="/urls", status=405, shortener_method="BREW"),
        # A URI and a user agent that try to fake fields: escaped, so they cannot.
        upstream(
            200,
            uri='/users?q=","edge":"hit","edge_breaker":"open"',
            shortener_log_user_agent='x","uri":"/health","protocol":"',
        ),
    ]
    samples = run_mtail(tmp_path, lines)
    requests = "nginx_access_requests_total"
    assert value(samples, "nginx_access_unparsed_lines_total") == 0
    assert value(samples, requests) == len(lines)
    assert value(samples, requests, origin="edge", route="link", status="302") == 3
    assert value(samples, requests, origin="upstream", route="link") == 4
    assert value(samples, requests, origin="nginx", route="api", status_class="5xx") == 1
    assert value(samples, requests, route="probe") == 2
    assert value(samples, requests, route="probe", status_class="5xx") == 1
    assert value(samples, requests, origin="upstream", route="api") == 3
    assert value(samples, requests, origin="nginx", route="api") == 3
    assert value(samples, "nginx_access_limited_total", zone="create") == 1
    # The histogram has the same labels, and the edge's answers fall in its first bucket.
    duration = "nginx_access_request_duration_seconds"
    assert value(samples, f"{duration}_count", origin="edge", route="link") == 3
    assert value(samples, f"{duration}_bucket", origin="edge", route="link", le="0.001") == 3
    assert value(samples, f"{duration}_count") == len(lines)
    # The edge's results with the breaker's state; the probe is a bypass too.
    edge = "nginx_access_edge_total"
    assert value(samples, edge, result="hit", breaker="closed") == 3
    assert value(samples, edge, result="error", breaker="open") == 1
    assert value(samples, edge, result="bypass", breaker="open") == 1
    assert value(samples, edge, result="bypass") == 4
    assert value(samples, edge) == 9
    # The last short-link line (the probe's) did not consult the breaker: it stays as the
    # last line that did (the HEAD's bypass did not either; the one before: open).
    assert value(samples, "nginx_access_edge_breaker_open") == 1


def test_histogram_buckets_bound_the_alert_thresholds():
    """The latency alert's threshold (p95 > 0.5 s) must be a bucket bound, or the quantile is
    an interpolation across a bucket that straddles it; the edge's answers (about a
    millisecond) need buckets below 5 ms to be seen at all."""
    buckets = yaml.safe_load((EXPORTERS / "defaults" / "main.yml").read_text())["exporters_mtail_duration_buckets"]
    assert buckets == sorted(buckets)
    rules = (ROOT / "ansible" / "roles" / "prometheus" / "files" / "rules" / "shortener.rules.yml").read_text()
    thresholds = [float(t) for t in re.findall(r"request_duration_seconds:p\d\d_5m > ([0-9.]+)", rules)]
    assert thresholds, "no latency threshold found in the rules"
    for threshold in thresholds:
        assert threshold in buckets, f"{threshold} s is not a bucket bound"
    assert buckets[0] <= 0.001


def utf8_pattern() -> re.Pattern[bytes]:
    """The nginx role's test of client text before it is logged (its maps' regex), as bytes."""
    found = re.search(r"\{% set utf8_pattern %\}(.*?)\{% endset %\}", NGINX_CONF.read_text())
    assert found, "no utf8_pattern in nginx.conf.j2"
    return re.compile(found.group(1).encode())


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_the_log_pattern_passes_exactly_the_utf8_that_python_reads(data: bytes) -> None:
    """What the access log takes as it is is what a strict UTF-8 reader (mtail, Python, the
    log console) accepts: no invalid byte, overlong form or surrogate; NUL aside (Nginx
    refuses it before anything is logged)."""
    try:
        data.decode("utf-8")
        valid = b"\x00" not in data
    except UnicodeDecodeError:
        valid = False
    assert bool(utf8_pattern().fullmatch(data)) is valid
