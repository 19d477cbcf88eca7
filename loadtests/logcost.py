"""What Nginx's access log costs, and whether mtail counts every line: `make bench`'s static 302
and hot redirect (the edge) with the log sent to different places, the variants alternating,
so that each round sees the same machine.

    python -m loadtests.logcost --target http://10.213.0.141 --rounds 3

Variants (the http-level ``access_log`` lines of the host's /etc/nginx/nginx.conf, rewritten
for the run and put back afterwards; ``nginx -t``, then a reload):

- ``deployed``: as the nginx role writes it: the file mtail tails (``buffer=64k flush=1s``: one
  write() per 64 kB) and one datagram per line to the journal (the log console's copy);
- ``file``: the file only (no journal copy);
- ``journal``: the journal's datagram only;
- ``off``: no access log.

Each run is ``loadtests.bench --phases static,hot`` (its own wrk settings, click check
included). Around each run the CPU time of nginx, systemd-journald and mtail on the host is
read, and divided by the requests wrk got answered: CPU microseconds per request, which the
shared machine's noise touches far less than the throughput. And the lines: those the run
added to the access log file, against those mtail counted (every ``nginx_access_*`` line
counter), once mtail has caught up: ``lost`` must be 0 whenever the file is written.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET
from loadtests import bench, labssh

NGINX_CONF = "/etc/nginx/nginx.conf"
ACCESS_FILE = "/var/log/nginx/access.log"
UNITS = ("nginx", "journald", "mtail")
PROGRAMS = ("nginx", "systemd-journal", "mtail")  # process names (15 characters at most)
# The http-level access_log lines the nginx role writes: the file, then the journal's copy.
ACCESS_LOG = re.compile(r"^ {4}access_log (?P<target>\S+) shortener_json\b.*$", re.M)
# Every line mtail reads lands in exactly one of these (by status, or unparsed).
MTAIL_LINES = re.compile(r"^nginx_access_(?:requests_total\{[^}]*\}|unparsed_lines_total) (\S+)$", re.M)


def variant_conf(original: str, variant: str) -> str:
    """The host's nginx.conf with its access log sent where the variant says."""
    lines = list(ACCESS_LOG.finditer(original))
    targets = [m.group("target") for m in lines]
    assert len(lines) == 2 and targets[1].startswith("syslog:"), (
        f"expected the file's and the journal's access_log lines: {targets}"
    )

    def keep(match: re.Match[str]) -> str:
        journal = match.group("target").startswith("syslog:")
        if variant == "deployed" or (variant == "file" and not journal) or (variant == "journal" and journal):
            return match.group(0)
        # "off": the first line says so, the second goes.
        return "    access_log off;" if variant == "off" and not journal else ""

    return ACCESS_LOG.sub(keep, original)


def install(host: str, conf: str) -> None:
    labssh.ssh(host, f"cat > {NGINX_CONF}.logcost && mv {NGINX_CONF}.logcost {NGINX_CONF}", stdin=conf.encode())
    labssh.ssh(host, "nginx -t -q && systemctl reload nginx && sleep 3")


def cpu_ns(host: str) -> dict[str, int]:
    """CPU time (user + system) of each program's processes so far, from /proc (systemd's own
    accounting is off in the lab's containers); clock ticks of 10 ms, enough over a run."""
    script = "; ".join(
        f"t=0; for p in $(pgrep -x {name}); do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t+$1+$2)); done; echo $t"
        for name in PROGRAMS
    )
    values = [int(v) * 10_000_000 for v in labssh.ssh(host, script).split()]
    return dict(zip(UNITS, values, strict=True))


def log_lines(host: str) -> tuple[int, int]:
    """Lines in the access log file and lines mtail counted, read together (the file's first:
    a line mtail counts between the two reads can only make mtail's count larger)."""
    out = labssh.ssh(
        host,
        f"(cat {ACCESS_FILE} 2>/dev/null || true) | wc -l; "
        "curl -sf http://127.0.0.1:3903/metrics || curl -sf http://$(hostname -I | cut -d' ' -f1):3903/metrics",
    )
    first, _, metrics = out.partition("\n")
    return int(first), round(sum(float(v) for v in MTAIL_LINES.findall(metrics)))


def settled_lines(host: str, before: tuple[int, int]) -> tuple[int, int]:
    """(lines the file gained, lines mtail counted) since `before`, once mtail has caught up
    (Nginx flushes its buffers within a second; mtail reads behind): up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        time.sleep(2)
        now = log_lines(host)
        gained = (now[0] - before[0], now[1] - before[1])
        if gained[1] >= gained[0] or time.monotonic() > deadline:
            return gained


def one_run(args: argparse.Namespace, host: str, variant: str, workdir: Path) -> dict:
    report = workdir / f"{variant}-{len(list(workdir.iterdir()))}.json"
    before = cpu_ns(host)
    lines_before = log_lines(host)
    load = labssh.loadavg1()
    status = bench.main(
        ["--target", args.target, "--phases", "static,hot", "--seconds", str(args.seconds), "--json", str(report)]
    )
    after = cpu_ns(host)
    file_lines, mtail_lines = settled_lines(host, lines_before)
    results = json.loads(report.read_text())["results"]
    answered = sum(r["requests"] for r in results.values()) or 1
    return {
        "variant": variant,
        "load": load,
        "static": results["static"]["rps"],
        "hot": results["hot"]["rps"],
        "hot_p99": results["hot"]["p99_ms"],
        "errors": sum(r["errors"] for r in results.values()),
        "clicks_ok": status == 0,
        "requests": answered,
        "file_lines": file_lines,
        "mtail_lines": mtail_lines,
        **{f"cpu_us_{u}": (after[u] - before[u]) / 1000 / answered for u in UNITS},
    }


def lost(row: dict) -> int:
    """Lines the file gained that mtail did not count (0 for the variants without the file)."""
    return max(row["file_lines"] - row["mtail_lines"], 0)


def print_table(rows: list[dict]) -> None:
    print(
        "\n| round | variant | load | static req/s | hot req/s | hot p99 ms | hot / static | errors | clicks | "
        "CPU µs/request: nginx, journald, mtail | requests | file lines | mtail lines | lost |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        cpu = ", ".join(f"{r[f'cpu_us_{u}']:.1f}" for u in UNITS)
        print(
            f"| {r['round']} | {r['variant']} | {r['load']:.1f} | {r['static']:,.0f} | {r['hot']:,.0f} | "
            f"{r['hot_p99']:.1f} | {r['hot'] / r['static']:.1%} | {r['errors']} | "
            f"{'OK' if r['clicks_ok'] else 'MISMATCH'} | {cpu} | {r['requests']:,} | {r['file_lines']:,} | "
            f"{r['mtail_lines']:,} | {lost(r):,} |"
        )
    print("\nmedians per variant:")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in ("static", "hot", "hot_p99", *(f"cpu_us_{u}" for u in UNITS))
        }
        print(
            f"  {variant:8} static {med['static']:,.0f}  hot {med['hot']:,.0f}  p99 {med['hot_p99']:.1f} ms  "
            + "  ".join(f"{u} {med[f'cpu_us_{u}']:.1f} µs" for u in UNITS)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--variants", default="deployed,file,journal,off")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = parser.parse_args(argv)
    host = urlparse(args.target).hostname or ""
    variants = args.variants.split(",")
    original = labssh.ssh(host, f"cat {NGINX_CONF}")
    for variant in variants:
        variant_conf(original, variant)  # every variant applies before the first run
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(1, args.rounds + 1):
                # Each round starts one variant later: no variant always runs first.
                shift = (round_no - 1) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    install(host, variant_conf(original, variant))
                    rows.append({"round": round_no, **one_run(args, host, variant, Path(tmp))})
    finally:
        install(host, original)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["clicks_ok"] and not r["errors"] and not lost(r) for r in rows) else 3


if __name__ == "__main__":
    raise SystemExit(main())
