"""What Nginx's access log costs: `make bench`'s static 302 and hot redirect (the edge) with the
log sent to different places, the variants alternating, so that each round sees the same
machine.

    python -m loadtests.logcost --target http://10.213.0.141 --rounds 3

Variants (the http-level ``access_log`` lines of the host's /etc/nginx/nginx.conf, rewritten
for the run and put back afterwards; ``nginx -t``, then a reload):

- ``sockets``: as deployed: one datagram per request to the journal (``/dev/log``) and one to
  mtail's socket (the metrics), each line parsed by journald and by mtail;
- ``journal``: the journal's datagram only (the deployment before mtail, issue 10);
- ``file``: one file, ``buffer=64k flush=1s`` (Nginx writes it in 64 kB blocks; mtail idle);
- ``off``: no access log.

Each run is ``loadtests.bench --phases static,hot`` (its own wrk settings, click check
included). Around each run the CPU time of nginx, systemd-journald and mtail
on the host is read, and divided by the requests wrk got answered: CPU microseconds per
request, which the shared machine's noise touches far less than the throughput.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET
from loadtests import bench, labssh

NGINX_CONF = "/etc/nginx/nginx.conf"
UNITS = ("nginx", "journald", "mtail")
PROGRAMS = ("nginx", "systemd-journal", "mtail")  # process names (15 characters at most)
# The http-level access_log lines the nginx role writes (syslog targets: journal and mtail).
ACCESS_LOG = re.compile(r"^ {4}access_log syslog:server=unix:(?P<socket>\S+?),.*$", re.M)
# A file of its own: Nginx's master opens logs as root without CAP_DAC_OVERRIDE (the nginx role's
# sandbox), so it cannot reopen the www-data-owned access.log; a new file it creates is its own.
FILE_LOG = "    access_log /var/log/nginx/access-logcost.log shortener_json buffer=64k flush=1s;"


def variant_conf(original: str, variant: str) -> str:
    """The host's nginx.conf with its access log sent where the variant says."""
    lines = list(ACCESS_LOG.finditer(original))
    assert len(lines) == 2, "expected the journal's and mtail's access_log lines"

    def keep(match: re.Match[str]) -> str:
        if variant == "sockets":
            return match.group(0)
        if variant == "journal":
            return match.group(0) if match.group("socket") == "/dev/log" else ""
        if match.group("socket") != "/dev/log":
            return ""
        return FILE_LOG if variant == "file" else "    access_log off;"

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


def one_run(args: argparse.Namespace, host: str, variant: str, workdir: Path) -> dict:
    report = workdir / f"{variant}-{len(list(workdir.iterdir()))}.json"
    before = cpu_ns(host)
    load = labssh.loadavg1()
    status = bench.main(
        ["--target", args.target, "--phases", "static,hot", "--seconds", str(args.seconds), "--json", str(report)]
    )
    after = cpu_ns(host)
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
        **{f"cpu_us_{u}": (after[u] - before[u]) / 1000 / answered for u in UNITS},
    }


def print_table(rows: list[dict]) -> None:
    print(
        "\n| round | variant | load | static req/s | hot req/s | hot p99 ms | hot / static | errors | clicks | "
        "CPU µs/request: nginx, journald, mtail |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        cpu = ", ".join(f"{r[f'cpu_us_{u}']:.1f}" for u in UNITS)
        print(
            f"| {r['round']} | {r['variant']} | {r['load']:.1f} | {r['static']:,.0f} | {r['hot']:,.0f} | "
            f"{r['hot_p99']:.1f} | {r['hot'] / r['static']:.1%} | {r['errors']} | "
            f"{'OK' if r['clicks_ok'] else 'MISMATCH'} | {cpu} |"
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
    parser.add_argument("--variants", default="sockets,journal,file,off")
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
        labssh.ssh(host, "rm -f /var/log/nginx/access-logcost.log", check=False)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["clicks_ok"] and not r["errors"] for r in rows) else 3


if __name__ == "__main__":
    raise SystemExit(main())
