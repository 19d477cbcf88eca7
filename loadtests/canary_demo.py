"""The canary demonstration of docs/deployment.md, against one converged lab host.

    .venv/bin/python -m loadtests.canary_demo --inventory .lab-inv/hosts.yml --target http://10.213.0.121

Three deploys, each under steady traffic (loadtests/steady.py) counted from start to end:

1. bad:     a release that answers 500 on --fault-share of user requests (a patched copy of
            the code: a before_request hook appended to app/wsgi.py, never in the product),
            deployed with -e deploy_canary=true: the canary must be rolled back by itself and
            the deploy must fail; every instance back on the running release.
2. good:    a release with a harmless change (a comment), canary mode: promoted, then rolled
            out to every instance.
3. rolling: another harmless release, a plain rolling deploy (no canary): 0 failed requests.
4. rollback: playbooks/rollback.yml, every instance back to the release before (the good one).

Each patched copy is the repository's app/ and requirements.txt copied to a scratch
directory (shortener_src_dir). Prints one JSON object per deploy and writes them all to
--out (default loadtests/results/canary-demo.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "ansible"

BAD_PATCH = """

# Canary demonstration only (loadtests/canary_demo.py): a bad release.
import random  # noqa: E402

from flask import jsonify, request  # noqa: E402


@app.before_request
def _injected_fault():  # type: ignore[no-untyped-def]
    if request.path not in ("/health", "/metrics") and random.random() < {share}:
        return jsonify(error="Injected fault (canary demonstration)"), 500
    return None
"""


def release_copy(scratch: Path, name: str, patch: str) -> Path:
    """app/ and requirements.txt of the repository, with `patch` appended to app/wsgi.py."""
    src = scratch / name
    shutil.copytree(ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "requirements.txt", src / "requirements.txt")
    with (src / "app" / "wsgi.py").open("a") as wsgi:
        wsgi.write(patch)
    return src


def deploy(args: argparse.Namespace, name: str, src: Path | None, canary: bool) -> dict:
    """One deploy.yml (rollback.yml without src) run under steady traffic: exit status, time, traffic."""
    load_out = Path(args.out).with_name(f"canary-demo-{name}-load.json")
    steady = [sys.executable, "-m", "loadtests.steady", "--target", args.target]
    load = subprocess.Popen(
        [*steady, "--rate", str(args.rate), "--out", str(load_out)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    time.sleep(args.settle)
    command = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(Path(args.inventory).resolve())]
    if src is None:
        command += ["playbooks/rollback.yml"]
    else:
        command += ["playbooks/deploy.yml", "-e", f"shortener_src_dir={src}"]
        command += ["-e", f"deploy_canary={str(canary).lower()}"]
    command += [arg for extra in args.extra for arg in ("-e", extra)]
    log = Path(args.out).with_name(f"canary-demo-{name}-ansible.log")
    started = time.time()
    with log.open("w") as out:
        status = subprocess.run(
            command,
            cwd=ANSIBLE,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")},
        ).returncode
    took = time.time() - started
    time.sleep(args.settle)
    load.send_signal(signal.SIGINT)
    load.wait(60)
    traffic = json.loads(load_out.read_text())
    verdicts = [line.strip() for line in log.read_text().splitlines() if "canary " in line and "after" in line]
    return {
        "deploy": name,
        "canary": canary,
        "ansible_exit": status,
        "deploy_seconds": round(took, 1),
        "verdict": verdicts[-1] if verdicts else None,
        "requests": traffic["requests"],
        "failed": traffic["failures"],
        "statuses": traffic["statuses"],
        "failures_by_second": traffic["failures_by_second"],
        "ansible_log": str(log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", required=True, help="inventory of the converged lab host")
    parser.add_argument("--target", required=True, help="the host's Nginx, e.g. http://10.213.0.121")
    parser.add_argument("--rate", type=float, default=40.0, help="steady requests per second")
    parser.add_argument("--fault-share", type=float, default=0.2, help="share of 500s of the bad release")
    parser.add_argument("--settle", type=float, default=10.0, help="traffic before and after each deploy (s)")
    parser.add_argument("--only", choices=["bad", "good", "rolling", "rollback"], action="append", help="these only")
    parser.add_argument("-e", dest="extra", action="append", default=[], help="extra var for deploy.yml")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "canary-demo.json"))
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plan = {
        "bad": (BAD_PATCH.replace("{share}", str(args.fault_share)), True),
        "good": (f"\n# Canary demonstration: a good release ({time.time_ns()}).\n", True),
        "rolling": (f"\n# Canary demonstration: a rolling deploy ({time.time_ns()}).\n", False),
        "rollback": (None, False),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="canary-demo-") as scratch:
        for name, (patch, canary) in plan.items():
            if args.only and name not in args.only:
                continue
            src = None if patch is None else release_copy(Path(scratch), name, patch)
            result = deploy(args, name, src, canary)
            print(json.dumps(result), flush=True)
            results.append(result)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
