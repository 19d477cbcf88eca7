"""Latency under a fixed offered load: hey sends paced redirects over many open connections.

    python -m loadtests.openloop                          # 1000, 2000, 4000, 8000 req/s, 1000 connections
    python -m loadtests.openloop --rates 2000 --seconds 60

wrk is a closed loop: each connection sends its next request when the last one is answered,
so its latency is connections / throughput. Here every connection sends at a fixed pace
(``hey -q``: one request every 1/q s, whatever the answers do), so the offered load is fixed
and the latency shows what a request waits for at that load. The targets (issue 14, hot
redirects answered by the edge): p99 under 10 ms at 2,000 redirects/s and under 50 ms at
8,000/s over 1,000 open connections.

The load generator runs on the same two cores as the stack, so each step also prints the CPU
the hey processes used (cores busy on average over the step, from the children's rusage): when
it nears the machine's cores, the generator, not the stack, limits the rate it can offer.

The connections are split over several hey processes (``--per-process``, 25 by default),
started spread over one period (1/q s). All connections of one hey send together (each
worker's ticker starts with the process): with one process for all 1,000 connections the
"fixed load" is a burst of 1,000 requests every period, and the latency measured is that
burst's queue (docs/capacity.md shows the difference). One hey also keeps at most 500 idle
connections to a host.

Every request is a hot redirect: one link, created for the run and put in the cache with a
HEAD (not a click). Per rate: the 302s received per second, p50/p95/p99 of every request
sent, errors (anything that is not a 302, and requests hey gave up on). Afterwards the clicks
of the link are counted in PostgreSQL: they must be at least the 302s received, and at most
that plus the requests that failed (a request hey timed out on may still have been served;
hey lets each connection finish its request before it stops, so nothing else is in flight).
Each step's raw per-request CSV goes to loadtests/results/. Exit status 3 when the click check
fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET
from loadtests import apikey, bench, labssh
from loadtests.cpu import ChildrenCpu

HERE = Path(__file__).resolve().parent


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_step(url: str, rate: int, connections: int, per_process: int, seconds: int, out: Path) -> dict:
    """One offered rate; returns its figures. The CSV of every request is kept in ``out``."""
    sizes = [per_process] * (connections // per_process)
    if connections % per_process:
        sizes.append(connections % per_process)
    qps = rate / connections  # per connection: the same pace on every one
    # The connections of one hey tick together (each worker's ticker starts with the process),
    # so the processes start spread over one period: bursts of --per-process requests at even
    # intervals, not one burst of every connection at once.
    period = 1 / qps
    children = ChildrenCpu()
    started = time.monotonic()
    procs = []
    for k, size in enumerate(sizes):
        time.sleep(max(0.0, started + k * period / len(sizes) - time.monotonic()))
        cmd = ["hey", "-z", f"{seconds}s", "-c", str(size), "-q", f"{qps:.6f}", "-t", "10"]
        cmd += ["-disable-redirects", "-disable-compression", "-o", "csv", url]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    raw = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"hey exited {proc.returncode}: {stderr[-2000:]}")
        raw.append(stdout)
        for row in csv.DictReader(io.StringIO(stdout)):
            latencies.append(float(row["response-time"]))
            statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    wall = time.monotonic() - started
    cpu = children.seconds()
    out.write_text("".join(raw))
    latencies.sort()
    ok = statuses.get("302", 0)
    return {
        "offered": rate,
        "sent": len(latencies),
        "rps_302": ok / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "ok": ok,
        "gen_cores": cpu / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--lab-host", default=None, help="SSH address of the host (default: the target's)")
    parser.add_argument("--rates", default="1000,2000,4000,8000", help="offered requests/s, one step each")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--per-process", type=int, default=25, help="connections per hey process (at most 500)")
    parser.add_argument("--seconds", type=int, default=30, help="seconds per step")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds between steps")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    apikey.add_argument(parser)
    args = parser.parse_args(argv)
    args.api_key = apikey.resolve(args.api_key)
    if shutil.which("hey") is None:
        parser.error("hey is not installed (apt-get install hey; make openloop does it)")
    if not 1 <= args.per_process <= 500:
        parser.error("--per-process must be 1..500: one hey keeps at most 500 idle connections")

    host = args.lab_host or urlparse(args.target).hostname or ""
    run_id = secrets.token_hex(3)
    facts = labssh.machine_facts(host)
    print(f"open-loop run {run_id} against {args.target}; machine: {facts}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    link = bench.create_link(args.target, f"https://example.com/bench-openloop/{run_id}", args.api_key)
    bench.warm(args.target, link["short_code"])
    url = args.target.rstrip("/") + "/" + link["short_code"]
    clicks_query = f"SELECT count(*) FROM events WHERE url_id = {link['id']}"
    rows = []
    failed = False
    try:
        with labssh.limits_exempt(host) as exempted:
            print(f"abuse limits lifted for {exempted} on {host} for the run", flush=True)
            for i, rate in enumerate(int(r) for r in args.rates.split(",")):
                if i:
                    time.sleep(args.pause)
                before = int(labssh.psql(host, clicks_query))
                load = os.getloadavg()[0]
                print(f"--- {rate} req/s offered over {args.connections} connections for {args.seconds} s", flush=True)
                row = run_step(
                    url,
                    rate,
                    args.connections,
                    args.per_process,
                    args.seconds,
                    args.out / f"openloop-{run_id}-{rate}.csv",
                )
                row["load_before"] = load
                # The clicks of this step: the queue drains within seconds once the load stops.
                counts = bench.wait_for_clicks(host, {"step": (clicks_query, before + row["ok"])}, timeout=120)
                row["clicks"] = counts["step"] - before
                # A request hey gave up on (time-out) may still have been served and counted.
                row["click_check"] = row["ok"] <= row["clicks"] <= row["ok"] + row["errors"]
                failed |= not row["click_check"]
                print(
                    f"    sent {row['sent']}, 302/s {row['rps_302']:.0f}, p50 {row['p50_ms']:.1f} ms, "
                    f"p95 {row['p95_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.0f} ms, "
                    f"errors {row['errors']} {row['statuses']}; hey used {row['gen_cores']:.2f} cores; "
                    f"clicks {row['clicks']} for {row['ok']} 302s "
                    f"({'OK' if row['click_check'] else 'MISMATCH'})",
                    flush=True,
                )
                rows.append(row)
    finally:
        bench.cleanup(host, run_id, link, None)

    print(f"\nopen-loop run {run_id}: hey, {args.connections} connections, {args.seconds} s a step; {facts}")
    print(
        "\n| offered req/s | 302/s | p50 ms | p95 ms | p99 ms | max ms | errors | clicks / 302s "
        "| hey cores | load before |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['offered']} | {r['rps_302']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['max_ms']:.0f} | {r['errors']} of {r['sent']} | {r['clicks']} / {r['ok']} "
            f"{'OK' if r['click_check'] else 'MISMATCH'} | {r['gen_cores']:.2f} | {r['load_before']:.2f} |"
        )
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
