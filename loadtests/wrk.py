"""One wrk phase of the bench: the command line, its Lua script's JSON line, the figures."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "wrk"


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
