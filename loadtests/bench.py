"""Throughput benchmark with wrk: the redirect path against two references, in ONE run.

    python -m loadtests.bench                 # against make up's lab host (labkit.hosts)
    python -m loadtests.bench --seconds 20 --connections 100

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

The references are set up on the host over SSH for the run and removed afterwards: an Nginx
file in /etc/nginx/conf.d/ with three name-based servers on port 80 (Host ``bench-static``,
``bench-wsgi`` and ``bench-python``: the firewall opens only 80) and three transient systemd
units running Gunicorn on ports 8101-8103.

After the run the click count is checked: the events table must hold exactly one click per
302 wrk received in the hot, python and cold phases (and one ``created`` event per 201), once the
click worker has emptied the queue. A mismatch fails the run (exit status 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET
from loadtests import apikey, labssh
from loadtests.references import (
    BARE_HOST,
    PYTHON_HOST,
    REDIS_CLI,
    STATIC_HOST,
    redis_cli,
    setup_references,
    teardown_references,
)
from loadtests.wrk import Result, run_wrk


def create_link(target: str, url: str, key: str, title: str = "bench hot link") -> dict:
    import urllib.request

    req = urllib.request.Request(
        target.rstrip("/") + "/urls",
        data=json.dumps({"original_url": url, "title": title}).encode(),
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


@dataclass
class Run:
    """One bench run: its arguments, host and id, and the links its phases redirect to."""

    args: argparse.Namespace
    host: str
    run_id: str
    hot: dict | None = None
    pyhot: dict | None = None
    cold_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class Phase:
    """A row of the bench: what it measures, the wrk script and path, and the script's
    environment for a run (None when the run has no link for it)."""

    what: str
    script: str
    path: str
    env: Callable[[Run], dict[str, str] | None]


def _cold_env(run: Run) -> dict[str, str] | None:
    if not run.cold_range:
        return None
    return {"BENCH_CODES_PREFIX": f"bc{run.run_id}x", "BENCH_CODES_COUNT": str(run.args.cold_codes)}


# In the order of the default --phases; a new row here is a new phase.
PHASES: dict[str, Phase] = {
    "static": Phase(
        "Nginx returns a fixed 302 (ceiling)", "plain.lua", "/x", lambda run: {"BENCH_HOST_HEADER": STATIC_HOST}
    ),
    "bare": Phase(
        "bare WSGI: one Redis GET + 302 under the same Gunicorn/Nginx (floor)",
        "plain.lua",
        "/x",
        lambda run: {"BENCH_HOST_HEADER": BARE_HOST},
    ),
    "hot": Phase(
        "hot redirect, full stack, click queued",
        "redirect.lua",
        "/",
        lambda run: {"BENCH_CODE": run.hot["short_code"]} if run.hot else None,
    ),
    "python": Phase(
        "hot redirect through the instances (edge bypassed), click queued",
        "redirect.lua",
        "/",
        lambda run: {"BENCH_CODE": run.pyhot["short_code"], "BENCH_HOST_HEADER": PYTHON_HOST} if run.pyhot else None,
    ),
    "cold": Phase(
        "cold redirect (cache miss -> PgBouncer -> PostgreSQL), click queued", "redirect.lua", "/", _cold_env
    ),
    "create": Phase(
        "POST /urls (link creation)",
        "create.lua",
        "/",
        lambda run: {"BENCH_RUN": run.run_id, "BENCH_API_KEY": run.args.api_key},
    ),
}
CLICKS = "SELECT count(*) FROM events WHERE event_type = 'click'"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--lab-host", default=None, help="SSH address of the host (default: the target's)")
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per phase")
    parser.add_argument("--grace", type=int, default=3, help="extra seconds after a counted phase (no clicks)")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cold-codes", type=int, default=150000, help="distinct never-requested codes for cold")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between phases")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the bench's links and events afterwards")
    apikey.add_argument(parser)
    args = parser.parse_args(argv)
    args.api_key = apikey.resolve(args.api_key)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    return args


def make_links(run: Run) -> None:
    """The hot phase's link (in the cache) and the cold phase's never-requested codes."""
    phases = run.args.phases
    if "hot" in phases:
        run.hot = create_link(run.args.target, f"https://example.com/bench-hot/{run.run_id}", run.args.api_key)
        warm(run.args.target, run.hot["short_code"])
    if "python" in phases:
        run.pyhot = create_link(run.args.target, f"https://example.com/bench-python/{run.run_id}", run.args.api_key)
        warm(run.args.target, run.pyhot["short_code"])
    if "cold" in phases:
        out = labssh.psql(
            run.host,
            "WITH ins AS (INSERT INTO urls (short_code, original_url, title) "
            f"SELECT 'bc{run.run_id}x' || g, 'https://example.com/bench-cold/' || g, 'bench' "
            f"FROM generate_series(1, {run.args.cold_codes}) g RETURNING id) SELECT min(id) || ' ' || max(id) FROM ins",
        )
        lo, hi = (int(x) for x in out.split())
        run.cold_range = (lo, hi)


def run_phases(run: Run) -> dict[str, Result]:
    """Each phase's wrk run in turn, with the references up for as long as a phase needs them."""
    args = run.args
    results: dict[str, Result] = {}
    references = bool({"static", "bare", "python"} & set(args.phases))
    try:
        if references:
            setup_references(run.host)
        make_links(run)
        for name in args.phases:
            time.sleep(args.pause)
            phase = PHASES[name]
            env = phase.env(run)
            if env is None:
                continue
            results[name] = run_wrk(args, name, phase.what, phase.script, phase.path, env)
            if name == "cold" and results[name].raw["requests"] > args.cold_codes:
                print("    WARNING: more requests than cold codes: some were cache hits", flush=True)
    finally:
        if references:
            teardown_references(run.host)
    return results


def click_expectations(run: Run, results: dict[str, Result]) -> dict[str, tuple[str, int]]:
    """Per counted phase: the query of its events and how many the answers wrk received call for."""
    expect: dict[str, tuple[str, int]] = {}
    if run.hot and "hot" in results:
        expect["hot"] = (f"{CLICKS} AND url_id = {run.hot['id']}", results["hot"].counted)
    if run.pyhot and "python" in results:
        expect["python"] = (f"{CLICKS} AND url_id = {run.pyhot['id']}", results["python"].counted)
    if run.cold_range and "cold" in results:
        lo, hi = run.cold_range
        expect["cold"] = (f"{CLICKS} AND url_id BETWEEN {lo} AND {hi}", results["cold"].counted)
    if "create" in results:
        expect["create"] = (
            "SELECT count(*) FROM events e JOIN urls u ON u.id = e.url_id WHERE e.event_type = 'created' "
            f"AND u.original_url LIKE 'https://example.com/bench-create/{run.run_id}/%'",
            results["create"].counted,
        )
    return expect


def check_clicks(run: Run, results: dict[str, Result]) -> tuple[list[str], bool]:
    """The click count check: one event per answer, once the queue is empty. Lines and failed."""
    expect = click_expectations(run, results)
    if not expect:
        return [], False
    print("--- click count check (events table vs responses wrk received)", flush=True)
    started = time.monotonic()
    counts = wait_for_clicks(run.host, expect, timeout=180)
    print(f"    click queue emptied {time.monotonic() - started:.0f} s after the last phase", flush=True)
    checks, failed = [], False
    for name, (_, want) in expect.items():
        ok = counts[name] == want
        failed |= not ok
        kind = "created events vs 201s" if name == "create" else "click events vs 302s"
        checks.append(f"{name}: {kind}: {counts[name]} vs {want} {'OK' if ok else 'MISMATCH'}")
    return checks, failed


def print_table(phases: list[str], results: dict[str, Result]) -> None:
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


def write_json(path: Path, run: Run, facts: dict[str, str], results: dict[str, Result], checks: list[str]) -> None:
    report = {
        "run": run.run_id,
        "facts": facts,
        "args": {k: str(v) for k, v in vars(run.args).items()},
        "results": {k: {**vars(v), "raw": v.raw} for k, v in results.items()},
        "checks": checks,
    }
    path.write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args, args.lab_host or urlparse(args.target).hostname or "", secrets.token_hex(3))
    facts = labssh.machine_facts(run.host)
    print(f"bench run {run.run_id} against {args.target}; machine: {facts}", flush=True)
    events_before = int(labssh.psql(run.host, CLICKS))
    results = run_phases(run)
    checks, failed = check_clicks(run, results)
    events_after = int(labssh.psql(run.host, CLICKS))

    print_table(args.phases, results)
    print(f"\nwrk -t {args.threads} -c {args.connections}, {args.seconds} s measured per phase; run {run.run_id}")
    print(f"machine: {facts}; load average now {labssh.loadavg1():.2f}")
    print(f"click events in the database: {events_before} before, {events_after} after the run")
    for line in checks:
        print(f"CHECK {line}")
    if args.json:
        write_json(args.json, run, facts, results, checks)
    if not args.keep:
        cleanup(run.host, run.run_id, run.hot, run.cold_range)
        if run.pyhot:
            cleanup(run.host, run.run_id, run.pyhot, None)
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
