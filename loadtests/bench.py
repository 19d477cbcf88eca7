"""Throughput benchmark with wrk: the redirect path against two references, in ONE run.

    python loadtests/bench.py                 # against the lab host 10.213.0.10
    python loadtests/bench.py --seconds 20 --connections 100

Phases, one after the other, each ``wrk -t THREADS -c CONNECTIONS`` for ``--seconds``:

1. ``static``: Nginx answering a fixed 302 itself (the machine's HTTP ceiling).
2. ``bare``: a bare WSGI function under the same Gunicorn settings (gthread, as many
   instances, workers and threads as the service) behind the same Nginx proxy settings,
   doing one Redis round trip (GET) and returning a 302 (the floor of any Python redirect).
3. ``hot``: a redirect of one link already in the cache, as visitors get it: answered by the
   Nginx edge (Lua, one Redis round trip, click queued; issue 14) when it is on.
4. ``python``: the same kind of hot link through the instances, the edge bypassed (a
   name-based server, Host ``bench-python``, proxying to the service's upstream without the
   edge): the Python path, which serves whatever the edge hands on.
5. ``cold``: a redirect for a different, never requested code each time (cache miss:
   PostgreSQL through PgBouncer, cache fill, click queued).
6. ``create``: POST /urls with a new URL each time.

The two references are set up on the host over SSH for the run and removed afterwards: an
Nginx file in /etc/nginx/conf.d/ with three name-based servers on port 80 (Host ``bench-static``,
``bench-wsgi`` and ``bench-python``: the firewall opens only 80) and three transient systemd units running
Gunicorn on ports 8101-8103.

After the run the click count is checked: the events table must hold exactly one click per
302 wrk received in the hot, python and cold phases (and one ``created`` event per 201), once the
click worker has emptied the queue. A mismatch fails the run (exit status 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apikey  # noqa: E402 - after the path is set
import labssh  # noqa: E402

LUA_DIR = HERE / "wrk"
BENCH_CONF = "/etc/nginx/conf.d/zz-shortener-bench.conf"
BENCH_DIR = "/opt/shortener-bench"
BARE_PORTS = (8101, 8102, 8103)
STATIC_HOST = "bench-static"
BARE_HOST = "bench-wsgi"
PYTHON_HOST = "bench-python"

BARE_APP = '''"""The bench's floor: one Redis round trip and a 302, nothing else."""
import os

import redis

_r = redis.Redis.from_url(
    os.environ["SHORTENER_REDIS_URL"], socket_timeout=0.25, socket_connect_timeout=0.25,
    decode_responses=True, health_check_interval=0,
)
_KEY = os.environ.get("BENCH_KEY", "shortener:url:bench")
_HEADERS = [("Location", "https://example.com/"), ("Content-Length", "0"),
            ("Cache-Control", "private, no-store")]


def app(environ, start_response):
    _r.get(_KEY)
    start_response("302 Found", list(_HEADERS))
    return [b""]
'''

# The service's Gunicorn settings that matter for throughput (app/gunicorn_conf.py).
BARE_GUNICORN_CONF = """import os
bind = os.environ["BENCH_BIND"]
workers = int(os.environ.get("SHORTENER_WORKERS", "2"))
threads = int(os.environ.get("SHORTENER_THREADS", "16"))
worker_class = "gthread"
keepalive = 75
accesslog = None
errorlog = "-"
"""

# Two name-based servers on the service's port 80. The bare server copies the service's
# location (proxy settings, upstream keepalive); both inherit its http-level access log.
NGINX_CONF = """# Written by loadtests/bench.py for one benchmark run; removed when it ends.
upstream shortener_bench_wsgi {{
    least_conn;
{servers}
    keepalive 64;
    keepalive_requests 10000;
    keepalive_timeout 60s;
}}
server {{
    listen 80;
    server_name {static};
    location / {{
        return 302 https://example.com/;
    }}
}}
server {{
    listen 80;
    server_name {bare};
    add_header X-Request-ID $request_id always;
    location / {{
        proxy_pass http://shortener_bench_wsgi;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;
        proxy_redirect off;
        proxy_next_upstream error timeout http_502 http_503;
    }}
}}
server {{
    listen 80;
    server_name {python};
    add_header X-Request-ID $request_id always;
    location / {{
        proxy_pass http://shortener;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;
        proxy_redirect off;
        proxy_next_upstream error timeout;
    }}
}}
"""


@dataclass
class Result:
    name: str
    what: str
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    counted: int = 0  # the responses with the phase's own status (302 or 201)
    raw: dict = field(default_factory=dict)


def run_wrk(args: argparse.Namespace, name: str, what: str, script: str, path: str, env: dict[str, str]) -> Result:
    duration = args.seconds + (args.grace if script != "plain.lua" else 0)
    cmd = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA_DIR / script),
    ]
    if "BENCH_HOST_HEADER" in env:
        cmd += ["-H", f"Host: {env['BENCH_HOST_HEADER']}"]
    cmd.append(args.target.rstrip("/") + path)
    full_env = dict(
        os.environ,
        BENCH_LUA_DIR=str(LUA_DIR),
        BENCH_MEASURE=str(args.seconds),
        BENCH_THREADS=str(args.threads),
        **env,
    )
    print(f"--- {name}: {what}\n    {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    match = re.search(r"^BENCH_JSON (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    data = json.loads(match.group(1))
    statuses = {k[1:]: v for k, v in data["statuses"].items()}
    res = Result(name=name, what=what, raw=data, statuses=statuses)
    res.requests = data["requests"]
    res.p50_ms = data["latency_us"]["p50"] / 1000
    res.p99_ms = data["latency_us"]["p99"] / 1000
    socket_errors = sum(v for k, v in data["errors"].items() if k != "status")
    if script == "plain.lua":
        res.rps = data["requests"] / (data["duration_us"] / 1e6)
        res.errors = socket_errors + data["errors"]["status"]
        res.counted = res.requests
    else:
        # Only the measured part counts: the phase's own answers over the time they took.
        own = "201" if script == "create.lua" else "302"
        res.counted = statuses.get(own, 0)
        seconds = data["counted_seconds"] or args.seconds
        res.rps = res.counted / seconds
        # The tail's 404s are expected; anything else that is not the phase's answer is an error.
        res.errors = socket_errors + sum(v for k, v in statuses.items() if k not in (own, "404"))
    print(
        f"    {res.rps:8.0f} req/s   p50 {res.p50_ms:6.2f} ms   p99 {res.p99_ms:7.2f} ms   "
        f"errors {res.errors}   statuses {statuses or 'n/a'}",
        flush=True,
    )
    for line in proc.stdout.splitlines():
        if "Non-2xx" in line or "Socket errors" in line:
            note = (
                " (the 404s of the uncounted tail are expected)" if "Non-2xx" in line and script != "plain.lua" else ""
            )
            print(f"    wrk: {line.strip()}{note}", flush=True)
    return res


# redis-cli 7.0 sends an empty user name for redis://:PASSWORD@ URLs, which Redis refuses: take
# the URL (redis://USER:PASSWORD@HOST:PORT/DB, the service's ACL user) apart in the shell and pass
# the password through REDISCLI_AUTH (not on the command line).
REDIS_ENV = (
    "u=${SHORTENER_REDIS_URL#*://}; hp=${u##*@}; hp=${hp%%/*}; a=${u%@*}; "
    "export REDISCLI_AUTH=${a#*:}; U=${a%%:*}; H=${hp%:*}; P=${hp##*:}"
)
REDIS_CLI = REDIS_ENV + '; redis-cli --user "$U" -h "$H" -p "$P"'


def redis_cli(host: str, args: str) -> str:
    return labssh.ssh(host, labssh.with_app_env(f"{REDIS_CLI} {args}")).strip()


def setup_references(host: str) -> None:
    env = labssh.ssh(host, f"cat {labssh.APP_ENV}")
    settings = {k: v.strip("\"'") for k, v in re.findall(r"^(SHORTENER_[A-Z_]+)=(.*)$", env, re.M)}
    workers, threads = settings.get("SHORTENER_WORKERS", "2"), settings.get("SHORTENER_THREADS", "16")
    print(f"references: {len(BARE_PORTS)} bare Gunicorn instances x {workers} workers x {threads} threads", flush=True)
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;" for p in BARE_PORTS)
    conf = NGINX_CONF.format(servers=servers, static=STATIC_HOST, bare=BARE_HOST, python=PYTHON_HOST)
    script = [
        f"mkdir -p {BENCH_DIR}",
        f"cat > {BENCH_DIR}/benchwsgi.py <<'PYEOF'\n{BARE_APP}PYEOF",
        f"cat > {BENCH_DIR}/gunicorn_conf.py <<'PYEOF'\n{BARE_GUNICORN_CONF}PYEOF",
        f"cat > {BENCH_CONF} <<'NGEOF'\n{conf}NGEOF",
    ]
    for port in BARE_PORTS:
        script.append(
            f"systemctl stop shortener-bench-{port} 2>/dev/null || true; systemctl reset-failed "
            f"shortener-bench-{port} 2>/dev/null || true; "
            f"systemd-run --quiet --unit=shortener-bench-{port} --uid=shortener --gid=shortener "
            f"--property=EnvironmentFile={labssh.APP_ENV} --setenv=BENCH_BIND=127.0.0.1:{port} "
            f"--setenv=BENCH_KEY=shortener:url:bench --working-directory={BENCH_DIR} --property=LimitNOFILE=65536 "
            f"{labssh.APP_VENV}/bin/gunicorn -c {BENCH_DIR}/gunicorn_conf.py benchwsgi:app"
        )
    script.append("nginx -t -q && systemctl reload nginx")
    labssh.ssh(host, "set -e\n" + "\n".join(script))
    redis_cli(host, "SET shortener:url:bench 'bench reference value'")
    for _ in range(60):
        out = labssh.ssh(
            host,
            " ; ".join(f"curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:{p}/x" for p in BARE_PORTS),
            check=False,
        )
        if out.split() == ["302"] * len(BARE_PORTS):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"the bare WSGI reference did not come up: {out}")


def teardown_references(host: str) -> None:
    script = [f"rm -f {BENCH_CONF}", "nginx -t -q && systemctl reload nginx"]
    script += [f"systemctl stop shortener-bench-{p} 2>/dev/null" for p in BARE_PORTS]
    script.append(f"rm -rf {BENCH_DIR}")
    labssh.ssh(host, "\n".join(script), check=False)
    redis_cli(host, "DEL shortener:url:bench")


def create_link(target: str, url: str, key: str) -> dict:
    import urllib.request

    req = urllib.request.Request(
        target.rstrip("/") + "/urls",
        data=json.dumps({"original_url": url, "title": "bench hot link"}).encode(),
        headers={"Content-Type": "application/json", **apikey.headers(key)},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def warm(target: str, code: str) -> None:
    """HEAD fills the cache without counting a click."""
    import urllib.request

    req = urllib.request.Request(target.rstrip("/") + "/" + code, method="HEAD")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    # The 302 surfaces as an HTTPError here: expected, the point was the cache fill.
    with contextlib.suppress(Exception):
        opener.open(req, timeout=10)


def wait_for_clicks(host: str, expect: dict[str, tuple[str, int]], timeout: float) -> dict[str, int]:
    """Polls the events table until each query returns its expected count, the click queue is
    empty and nothing changes any more, or the timeout passes. Returns the last counts."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    while True:
        counts = {name: int(labssh.psql(host, query) or 0) for name, (query, _) in expect.items()}
        backlog = redis_cli(host, "XLEN shortener:clicks")
        if counts != last:
            stable_since = time.monotonic()
            last = counts
        done = all(counts[n] == want for n, (_, want) in expect.items())
        print(f"    events so far {counts}, click queue length {backlog}", flush=True)
        if done or time.monotonic() > deadline or (backlog == "0" and time.monotonic() - stable_since > 10):
            return counts
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="http://10.213.0.10")
    parser.add_argument("--lab-host", default=None, help="SSH address of the host (default: the target's)")
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per phase")
    parser.add_argument("--grace", type=int, default=3, help="extra seconds after a counted phase (no clicks)")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cold-codes", type=int, default=150000, help="distinct never-requested codes for cold")
    parser.add_argument("--phases", default="static,bare,hot,python,cold,create")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between phases")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the bench's links and events afterwards")
    apikey.add_argument(parser)
    args = parser.parse_args(argv)
    args.api_key = apikey.resolve(args.api_key)
    host = args.lab_host or urlparse(args.target).hostname or ""
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    run_id = secrets.token_hex(3)
    facts = labssh.machine_facts(host)
    print(f"bench run {run_id} against {args.target}; machine: {facts}", flush=True)

    results: dict[str, Result] = {}
    checks: list[str] = []
    failed = False
    hot: dict | None = None
    pyhot: dict | None = None
    cold_range: tuple[int, int] | None = None
    events_before = int(labssh.psql(host, "SELECT count(*) FROM events WHERE event_type = 'click'"))
    try:
        if {"static", "bare", "python"} & set(phases):
            setup_references(host)
        if "hot" in phases:
            hot = create_link(args.target, f"https://example.com/bench-hot/{run_id}", args.api_key)
            warm(args.target, hot["short_code"])
        if "python" in phases:
            pyhot = create_link(args.target, f"https://example.com/bench-python/{run_id}", args.api_key)
            warm(args.target, pyhot["short_code"])
        if "cold" in phases:
            prefix = f"bc{run_id}x"
            out = labssh.psql(
                host,
                "WITH ins AS (INSERT INTO urls (short_code, original_url, title) "
                f"SELECT '{prefix}' || g, 'https://example.com/bench-cold/' || g, 'bench' "
                f"FROM generate_series(1, {args.cold_codes}) g RETURNING id) SELECT min(id) || ' ' || max(id) FROM ins",
            )
            lo, hi = (int(x) for x in out.split())
            cold_range = (lo, hi)
        for phase in phases:
            time.sleep(args.pause)
            if phase == "static":
                results[phase] = run_wrk(
                    args, phase, "Nginx returns a fixed 302 (ceiling)", "plain.lua", "/x",
                    {"BENCH_HOST_HEADER": STATIC_HOST},
                )  # fmt: skip
            elif phase == "bare":
                results[phase] = run_wrk(
                    args, phase, "bare WSGI: one Redis GET + 302 under the same Gunicorn/Nginx (floor)",
                    "plain.lua", "/x", {"BENCH_HOST_HEADER": BARE_HOST},
                )  # fmt: skip
            elif phase == "hot" and hot:
                results[phase] = run_wrk(
                    args, phase, "hot redirect, full stack, click queued", "redirect.lua", "/",
                    {"BENCH_CODE": hot["short_code"]},
                )  # fmt: skip
            elif phase == "python" and pyhot:
                results[phase] = run_wrk(
                    args, phase, "hot redirect through the instances (edge bypassed), click queued",
                    "redirect.lua", "/", {"BENCH_CODE": pyhot["short_code"], "BENCH_HOST_HEADER": PYTHON_HOST},
                )  # fmt: skip
            elif phase == "cold" and cold_range:
                results[phase] = run_wrk(
                    args, phase, "cold redirect (cache miss -> PgBouncer -> PostgreSQL), click queued",
                    "redirect.lua", "/",
                    {"BENCH_CODES_PREFIX": f"bc{run_id}x", "BENCH_CODES_COUNT": str(args.cold_codes)},
                )  # fmt: skip
                if results[phase].raw["requests"] > args.cold_codes:
                    print("    WARNING: more requests than cold codes: some were cache hits", flush=True)
            elif phase == "create":
                results[phase] = run_wrk(
                    args,
                    phase,
                    "POST /urls (link creation)",
                    "create.lua",
                    "/",
                    {"BENCH_RUN": run_id, "BENCH_API_KEY": args.api_key},
                )
    finally:
        if {"static", "bare", "python"} & set(phases):
            teardown_references(host)

    # --- the click count ---------------------------------------------------------------
    expect: dict[str, tuple[str, int]] = {}
    if hot and "hot" in results:
        expect["hot"] = (
            f"SELECT count(*) FROM events WHERE event_type = 'click' AND url_id = {hot['id']}",
            results["hot"].counted,
        )
    if pyhot and "python" in results:
        expect["python"] = (
            f"SELECT count(*) FROM events WHERE event_type = 'click' AND url_id = {pyhot['id']}",
            results["python"].counted,
        )
    if cold_range and "cold" in results:
        expect["cold"] = (
            "SELECT count(*) FROM events WHERE event_type = 'click' "
            f"AND url_id BETWEEN {cold_range[0]} AND {cold_range[1]}",
            results["cold"].counted,
        )
    if "create" in results:
        expect["create"] = (
            "SELECT count(*) FROM events e JOIN urls u ON u.id = e.url_id WHERE e.event_type = 'created' "
            f"AND u.original_url LIKE 'https://example.com/bench-create/{run_id}/%'",
            results["create"].counted,
        )
    if expect:
        print("--- click count check (events table vs responses wrk received)", flush=True)
        started = time.monotonic()
        counts = wait_for_clicks(host, expect, timeout=180)
        print(f"    click queue emptied {time.monotonic() - started:.0f} s after the last phase", flush=True)
        for name, (_, want) in expect.items():
            ok = counts[name] == want
            failed |= not ok
            kind = "created events vs 201s" if name == "create" else "click events vs 302s"
            checks.append(f"{name}: {kind}: {counts[name]} vs {want} {'OK' if ok else 'MISMATCH'}")
    events_after = int(labssh.psql(host, "SELECT count(*) FROM events WHERE event_type = 'click'"))

    # --- summary -----------------------------------------------------------------------
    ref_static = results.get("static")
    ref_bare = results.get("bare")
    print("\n| phase | what | req/s | p50 ms | p99 ms | errors | vs static 302 | vs bare WSGI |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in phases:
        r = results.get(name)
        if r is None:
            continue
        vs_static = f"{100 * r.rps / ref_static.rps:.1f}%" if ref_static and ref_static.rps else "n/a"
        vs_bare = f"{100 * r.rps / ref_bare.rps:.1f}%" if ref_bare and ref_bare.rps else "n/a"
        figures = f"{r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors}"
        print(f"| {name} | {r.what} | {figures} | {vs_static} | {vs_bare} |")
    print(f"\nwrk -t {args.threads} -c {args.connections}, {args.seconds} s measured per phase; run {run_id}")
    print(f"machine: {facts}; load average now {labssh.loadavg1():.2f}")
    print(f"click events in the database: {events_before} before, {events_after} after the run")
    for line in checks:
        print(f"CHECK {line}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "run": run_id,
                    "facts": facts,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": {k: {**vars(v), "raw": v.raw} for k, v in results.items()},
                    "checks": checks,
                },
                indent=2,
            )
        )
    if not args.keep:
        cleanup(host, run_id, hot, cold_range)
        if pyhot:
            cleanup(host, run_id, pyhot, None)
    if failed:
        print("\nFAILED: the number of click events does not match the redirects served", file=sys.stderr)
        return 3
    return 0


def cleanup(host: str, run_id: str, hot: dict | None, cold_range: tuple[int, int] | None) -> None:
    """Removes the bench's links, their events and cache entries (they would skew later runs)."""
    ids = []
    if hot:
        ids.append(f"u.id = {hot['id']}")
    if cold_range:
        ids.append(f"u.id BETWEEN {cold_range[0]} AND {cold_range[1]}")
    ids.append(f"u.original_url LIKE 'https://example.com/bench-create/{run_id}/%'")
    where = " OR ".join(ids)
    labssh.psql(host, f"DELETE FROM events e USING urls u WHERE e.url_id = u.id AND ({where})")
    labssh.psql(host, f"DELETE FROM urls u WHERE {where}")
    labssh.ssh(
        host,
        labssh.with_app_env(
            f'{REDIS_CLI} --scan --pattern "shortener:url:bc{run_id}x*" '
            '| xargs -r -n 1000 redis-cli --user "$U" -h "$H" -p "$P" UNLINK >/dev/null'
        ),
        check=False,
    )


if __name__ == "__main__":
    sys.exit(main())
