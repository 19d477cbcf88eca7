"""Profile the hot redirect under load: wrk drives one cached link through Nginx while py-spy
samples Gunicorn workers on the lab host; prints where the workers' time goes.

    python -m loadtests.hotprofile                   # 25 s, every worker of instance 8001
    python -m loadtests.hotprofile --seconds 40 --instance 8002 --out /tmp/prof

py-spy (the PyPI package's static binary from this machine's .venv) is copied to the host's
/usr/local/bin for the run. Output: one collapsed-stack file per worker (``py-spy record
--format raw``, readable by any flame-graph tool) plus a summary of the functions with the
most samples: own time (the frame on top of the stack) and inclusive time (on the stack).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from labkit.hosts import DEFAULT_TARGET
from loadtests import apikey, labssh
from loadtests.bench import create_link

HERE = Path(__file__).resolve().parent


def summarize(files: list[Path], top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            # Frames read "function (file:line)": group by function and file, not by line.
            names = [f.split(":")[0] + ")" if " (" in f else f for f in frames]
            own[names[-1]] += n
            for name in set(names):
                incl[name] += n
    lines = [f"{total} samples over {len(files)} worker(s)", "", "own time (top of stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time (anywhere on the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in incl.most_common(top * 2)]
    return "\n".join(lines)


def cpu_snapshot(host: str) -> dict[str, float]:
    """CPU seconds used so far by each live process on the host, summed by command name."""
    raw = labssh.ssh(host, "cat /proc/[0-9]*/stat 2>/dev/null; getconf CLK_TCK", check=False)
    lines = raw.strip().splitlines()
    ticks = float(lines[-1])
    usage: collections.Counter[str] = collections.Counter()
    for line in lines[:-1]:
        head, _, rest = line.rpartition(")")
        comm = head.partition("(")[2]
        fields = rest.split()
        if len(fields) > 13:
            # utime and stime are fields 14 and 15 of the line, 12 and 13 after the ")".
            usage[comm] += (int(fields[11]) + int(fields[12])) / ticks
    return usage


REMOTE_DIR = "/tmp/shortener-profile"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--seconds", type=int, default=25)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--instance", default="8001", help="the instance (port) whose workers are sampled")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every busy thread (wall time, includes waits) instead of only the one holding the GIL (CPU)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / time.strftime("profile-%Y%m%d-%H%M%S"))
    apikey.add_argument(parser)
    return parser.parse_args(argv)


def install_pyspy(host: str) -> None:
    """This machine's py-spy, copied to the host (no package there)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with open(pyspy, "rb") as handle:
        labssh.ssh(host, "cat > /usr/local/bin/py-spy && chmod 755 /usr/local/bin/py-spy", stdin=handle.read())


def start_wrk(args: argparse.Namespace, code: str) -> subprocess.Popen[str]:
    """wrk on the one cached link, a little longer than the sampling (which starts 3 s in)."""
    cmd = ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.seconds + 6}s", "--latency"]
    return subprocess.Popen([*cmd, f"{args.target.rstrip('/')}/{code}"], stdout=subprocess.PIPE, text=True)


def record(host: str, args: argparse.Namespace, workers: list[str]) -> tuple[dict[str, float], float]:
    """py-spy on every worker at once; the CPU each command used on the host meanwhile, and over how long."""
    cpu_before = cpu_snapshot(host)
    cpu_started = time.monotonic()
    mode = "" if args.all_threads else "--gil "
    spies = " & ".join(
        f"py-spy record --nonblocking {mode}--rate {args.rate} -d {args.seconds} --format raw "
        f"-o {REMOTE_DIR}/{pid}.txt --pid {pid} >/dev/null 2>&1"
        for pid in workers
    )
    labssh.ssh(host, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && {spies} & wait", timeout=args.seconds + 60)
    cpu_after = cpu_snapshot(host)
    used = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    return used, time.monotonic() - cpu_started


def fetch_stacks(host: str, out: Path, workers: list[str]) -> list[Path]:
    files = []
    for pid in workers:
        path = out / f"worker-{pid}.txt"
        path.write_text(labssh.ssh(host, f"cat {REMOTE_DIR}/{pid}.txt", check=False))
        files.append(path)
    return files


def cpu_report(used: dict[str, float], seconds: float) -> list[str]:
    busy = sorted(((v, k) for k, v in used.items() if v > 0.05), reverse=True)
    lines = [
        f"CPU used on the host over {seconds:.0f} s of load, by command "
        f"(py-spy itself included; 100% = one core): {sum(used.values()) / seconds * 100:.0f}% in all"
    ]
    return lines + [f"  {100 * v / seconds:6.1f}%  {k}" for v, k in busy]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = urlparse(args.target).hostname or ""
    args.out.mkdir(parents=True, exist_ok=True)
    install_pyspy(host)
    link = create_link(args.target, "https://example.com/profile", apikey.resolve(args.api_key), title="profile")
    pids = labssh.ssh(host, f"pgrep -f 'shortener-control/{args.instance}/'").split()
    workers = pids[1:]  # the first is the Gunicorn master (lowest pid)
    print(f"link {link['short_code']}; sampling workers {workers} of instance {args.instance}", flush=True)
    wrk = start_wrk(args, link["short_code"])
    time.sleep(3)
    used, cpu_seconds = record(host, args, workers)
    out, _ = wrk.communicate()
    print(out, flush=True)
    summary = summarize(fetch_stacks(host, args.out, workers), args.top)
    summary = "\n".join(cpu_report(used, cpu_seconds)) + "\n\n" + summary
    (args.out / "summary.txt").write_text(summary + "\n\nwrk:\n" + out)
    print(summary)
    print(f"\ncollapsed stacks and summary in {args.out}")
    labssh.psql(host, f"DELETE FROM events WHERE url_id = {int(link['id'])}")
    labssh.psql(host, f"DELETE FROM urls WHERE id = {int(link['id'])}")
    return 0 if os.path.exists(args.out / "summary.txt") else 1


if __name__ == "__main__":
    sys.exit(main())
