"""The load ladder: Locust headless against a target at growing user counts.

    python -m loadtests.run                      # make up's lab host, 50 .. 5000 users
    python -m loadtests.run --users 50,200 --step-seconds 30 --processes 2

Per step: Locust runs ``--step-seconds`` in all (users spawned over ``--ramp-seconds``, then
the statistics are reset, so the figures describe the steady part only). Writes, in
``--out``: ladder.csv and ladder.md (requests/s, p50/p95/p99, error rate per step, the
redirects on their own too, the load average and the lab host's memory), the two PNG charts,
and each step's raw Locust CSVs. Progress is printed every few seconds.

Locust shares the two cores with the whole stack when the target is a lab host on this
machine: ``--processes N`` runs N Locust worker processes (N > 1 only helps when Locust itself,
not the stack, is the limit: see docs/capacity.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET, is_lab_address
from loadtests import apikey, labssh
from loadtests.cpu import ChildrenCpu

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_SEED = ROOT.parent / "shared" / "seed"


@dataclass
class Step:
    users: int
    seconds: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_pct: float
    redirect_rps: float
    redirect_p50_ms: float
    redirect_p95_ms: float
    redirect_p99_ms: float
    load1_before: float
    load1_after: float
    host_mem_mib: int
    locust_cpu_pct: float


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def host_memory_mib(host: str | None) -> int:
    """Memory the lab host's processes hold, in MiB: anonymous memory plus shared memory of its
    memory cgroup (what `free` calls used: page cache, which the kernel drops at will, is not
    counted). cgroup v2 or v1, whichever the host shows; -1 when it cannot be read."""
    if not host:
        return -1
    awk_v2 = 'awk \'$1=="anon"||$1=="shmem"{s+=$2} END{print int(s/1048576)}\' /sys/fs/cgroup/memory.stat'
    awk_v1 = (
        'awk \'$1=="total_rss"||$1=="total_shmem"{s+=$2} END{print int(s/1048576)}\' /sys/fs/cgroup/memory/memory.stat'
    )
    script = f"if [ -f /sys/fs/cgroup/memory.current ]; then {awk_v2}; else {awk_v1}; fi"
    try:
        return int(labssh.ssh(host, script, timeout=20).strip())
    except (RuntimeError, ValueError, subprocess.TimeoutExpired):
        return -1


def progress_line(prefix: Path) -> str:
    """The newest Aggregated row of Locust's history CSV, as one short line."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return "starting"
    last = None
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                last = row
    if last is None:
        return "starting"
    return (
        f"users={last.get('User Count')} rps={_num(last.get('Requests/s', '0')):.0f} "
        f"p50={last.get('50%')} p95={last.get('95%')} p99={last.get('99%')} ms "
        f"fails/s={_num(last.get('Failures/s', '0')):.1f}"
    )


def locust_command(args: argparse.Namespace, users: int, prefix: Path, spawn_rate: float) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        args.target,
        "-u",
        str(users),
        "-r",
        f"{spawn_rate:g}",
        "-t",
        f"{args.step_seconds}s",
        "--stop-timeout",
        "5",
        "--reset-stats",
        "--only-summary",
        "--csv",
        str(prefix),
        "--loglevel",
        "WARNING",
        "--logfile",
        f"{prefix}.log",
        args.user_class,
    ]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    return cmd


def locust_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, LOCUST_WAIT_MIN=str(args.wait_min), LOCUST_WAIT_MAX=str(args.wait_max))
    env[apikey.ENV] = args.api_key
    if args.seed_dir:
        env["SHORTENER_SEED_DIR"] = str(args.seed_dir)
    return env


def watch_locust(args: argparse.Namespace, cmd: list[str], prefix: Path, ramp: int) -> tuple[int | None, int, float]:
    """Runs Locust, printing its progress and sampling the host's memory; kills it when it
    overstays. Returns its exit status, the host's peak memory (MiB) and Locust's CPU as a
    fraction of one core."""
    started = time.monotonic()
    children = ChildrenCpu()
    mem_peak = -1
    with open(f"{prefix}.out", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=locust_env(args), cwd=HERE)
        next_mem = ramp + 5.0  # seconds into the step
        while proc.poll() is None:
            time.sleep(args.progress_every)
            elapsed = time.monotonic() - started
            if elapsed >= next_mem:
                mem_peak = max(mem_peak, host_memory_mib(args.lab_host))
                next_mem = elapsed + 15
            print(f"    t={elapsed:4.0f}s  {progress_line(prefix)}  host mem {mem_peak} MiB", flush=True)
            if elapsed > args.step_seconds + 60:
                proc.kill()
                print("    locust did not stop in time: killed", flush=True)
    # Locust's own CPU (all its processes, once they have exited), as a fraction of one core.
    return proc.returncode, mem_peak, children.seconds() / max(1.0, time.monotonic() - started)


def step_from_stats(args: argparse.Namespace, users: int, prefix: Path, **measured: float) -> Step:
    """The step's figures from Locust's CSV (whole run and the redirect alone) and what was measured around it."""
    stats = read_stats(prefix)
    agg = stats.get("Aggregated", {})
    redirect = stats.get("/[code]", {})
    requests = int(_num(agg.get("Request Count", "0")))
    failures = int(_num(agg.get("Failure Count", "0")))
    return Step(
        users=users,
        seconds=args.step_seconds,
        requests=requests,
        failures=failures,
        rps=round(_num(agg.get("Requests/s", "0")), 1),
        p50_ms=_num(agg.get("50%", "0")),
        p95_ms=_num(agg.get("95%", "0")),
        p99_ms=_num(agg.get("99%", "0")),
        error_pct=round(100.0 * failures / requests, 3) if requests else 100.0,
        redirect_rps=round(_num(redirect.get("Requests/s", "0")), 1),
        redirect_p50_ms=_num(redirect.get("50%", "0")),
        redirect_p95_ms=_num(redirect.get("95%", "0")),
        redirect_p99_ms=_num(redirect.get("99%", "0")),
        load1_before=measured["load1_before"],
        load1_after=measured["load1_after"],
        host_mem_mib=int(measured["host_mem_mib"]),
        locust_cpu_pct=round(100 * measured["locust_cpu"], 1),
    )


def run_step(args: argparse.Namespace, users: int, out: Path, index: int, total: int) -> Step:
    prefix = out / f"step-{users:05d}"
    ramp = max(1, min(args.ramp_seconds, args.step_seconds // 2))
    spawn_rate = max(1.0, users / ramp)
    load_before = labssh.loadavg1()
    print(
        f"[{index}/{total}] {users} users for {args.step_seconds}s (spawn {spawn_rate:g}/s, "
        f"load average {load_before:.2f})",
        flush=True,
    )
    returncode, mem_peak, locust_cpu = watch_locust(args, locust_command(args, users, prefix, spawn_rate), prefix, ramp)
    step = step_from_stats(
        args,
        users,
        prefix,
        load1_before=load_before,
        load1_after=labssh.loadavg1(),
        host_mem_mib=mem_peak,
        locust_cpu=locust_cpu,
    )
    print(
        f"    => {step.rps} req/s, p50 {step.p50_ms:g} / p95 {step.p95_ms:g} / p99 {step.p99_ms:g} ms, "
        f"errors {step.error_pct}% ({step.failures}/{step.requests})",
        flush=True,
    )
    if returncode not in (0, 1):  # 1: Locust saw failures, reported above
        print(f"    locust exited {returncode}: see {prefix}.out", flush=True)
    return step


def write_outputs(steps: list[Step], out: Path, facts: dict[str, str], args: argparse.Namespace) -> None:
    names = [f.name for f in fields(Step)]
    with (out / "ladder.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for step in steps:
            writer.writerow(asdict(step))
    lines = [
        f"Target {args.target}, user class {args.user_class}, think time {args.wait_min:g}-{args.wait_max:g} s, "
        f"{args.step_seconds} s per step (spawn over {args.ramp_seconds} s, then statistics reset), "
        f"Locust processes: {args.processes}.",
        f"Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['memory']}, kernel {facts['kernel']}.",
        "",
        "| users | req/s | p50 ms | p95 ms | p99 ms | errors | redirect req/s | redirect p95 ms "
        "| load avg (1 min) before/after | lab host memory MiB | Locust CPU (% of a core) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        mem = s.host_mem_mib if s.host_mem_mib >= 0 else "n/a"
        lines.append(
            f"| {s.users} | {s.rps:.0f} | {s.p50_ms:g} | {s.p95_ms:g} | {s.p99_ms:g} | "
            f"{s.error_pct:g}% ({s.failures}/{s.requests}) | {s.redirect_rps:.0f} | {s.redirect_p95_ms:g} | "
            f"{s.load1_before:.2f} / {s.load1_after:.2f} | {mem} | {s.locust_cpu_pct:g} |"
        )
    (out / "ladder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    charts(steps, out, args.img_dir)


def charts(steps: list[Step], out: Path, img_dir: Path | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s.users for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(users, [s.p50_ms for s in steps], "o-", label="p50")
    ax.plot(users, [s.p95_ms for s in steps], "o-", label="p95")
    ax.plot(users, [s.p99_ms for s in steps], "o-", label="p99")
    ax.axhline(250, color="grey", linestyle=":", label="p95 target 250 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("response time (ms, all requests)")
    ax.set_title("Locust ladder: latency against users")
    ax.set_xticks(users, [str(u) for u in users])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loadtest-latency.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(users, [s.rps for s in steps], "o-", label="all requests/s")
    ax.plot(users, [s.redirect_rps for s in steps], "s--", label="redirects/s")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("requests/s")
    ax.set_xticks(users, [str(u) for u in users])
    ax.grid(True, which="both", alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(users, [s.error_pct for s in steps], "x:", color="red", label="error rate %")
    ax2.set_ylabel("error rate (%)")
    ax2.set_ylim(bottom=0, top=max(5.0, max(s.error_pct for s in steps) * 1.2))
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
    ax.set_title("Locust ladder: throughput against users")
    fig.tight_layout()
    fig.savefig(out / "loadtest-throughput.png")
    plt.close(fig)
    if img_dir:
        img_dir.mkdir(parents=True, exist_ok=True)
        for name in ("loadtest-latency.png", "loadtest-throughput.png"):
            shutil.copy(out / name, img_dir / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET, help="base URL (default %(default)s)")
    parser.add_argument("--users", default="50,200,500,1000,2000,5000", help="comma-separated user counts")
    parser.add_argument("--step-seconds", type=int, default=60, help="length of each step, spawn included")
    parser.add_argument("--ramp-seconds", type=int, default=15, help="spawn all users within this time")
    parser.add_argument("--processes", type=int, default=1, help="Locust processes (--processes)")
    parser.add_argument("--user-class", default="ShortenerUser", choices=["ShortenerUser", "PacedRedirectUser"])
    parser.add_argument("--wait-min", type=float, default=1.0, help="think time, seconds (ShortenerUser)")
    parser.add_argument("--wait-max", type=float, default=3.0)
    parser.add_argument("--seed-dir", type=Path, default=DEFAULT_SEED, help="the seed CSVs (default %(default)s)")
    parser.add_argument(
        "--seed",
        choices=["ssh", "none"],
        default="ssh",
        help="load the seed into the target first with python -m app.seed over SSH (lab hosts)",
    )
    parser.add_argument("--lab-host", default=None, help="SSH address of the target (default: the target's host)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: loadtests/results/...)")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img", help="copy the charts here ('' = no)")
    parser.add_argument("--progress-every", type=float, default=5.0)
    parser.add_argument("--max-load", type=float, default=0.0, help="wait until the 1-min load average is below this")
    apikey.add_argument(parser)
    args = parser.parse_args(argv)
    args.api_key = apikey.resolve(args.api_key)
    if args.img_dir is not None and str(args.img_dir) in ("", "."):
        args.img_dir = None
    host = urlparse(args.target).hostname
    if args.lab_host is None:
        args.lab_host = host if is_lab_address(host) else None
    users = [int(u) for u in args.users.split(",") if u.strip()]
    out = args.out or HERE / "results" / time.strftime("ladder-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    if args.seed == "ssh":
        if not args.lab_host:
            parser.error("--seed ssh needs a lab host target (or --lab-host); use --seed none otherwise")
        print(f"loading the seed from {args.seed_dir} into {args.lab_host} ...", flush=True)
        labssh.load_seed(args.lab_host, args.seed_dir)

    facts = labssh.machine_facts(args.lab_host)
    print(f"machine: {facts}", flush=True)
    steps: list[Step] = []
    # All users share this machine's address: the abuse limits are lifted for it on a lab host.
    with labssh.limits_exempt(args.lab_host) if args.lab_host else contextlib.nullcontext():
        for index, count in enumerate(users, 1):
            if args.max_load > 0:
                while labssh.loadavg1() > args.max_load:
                    print(f"    waiting for load average < {args.max_load} (now {labssh.loadavg1():.2f})", flush=True)
                    time.sleep(15)
            steps.append(run_step(args, count, out, index, len(users)))
            write_outputs(steps, out, facts, args)
            time.sleep(3)  # let connections in TIME_WAIT and the click queue settle between steps
    print(f"\nresults in {out}", flush=True)
    worst = max(s.error_pct for s in steps)
    return 0 if worst < 5.0 else 2


if __name__ == "__main__":
    sys.exit(main())
