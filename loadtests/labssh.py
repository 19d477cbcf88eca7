"""SSH to a lab host (lab/lab.py's key and options) and the few host-side steps the load
tests share: load the seed, read machine facts."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

# The lab tool's own SSH options, so both reach the hosts alike.
_spec = importlib.util.spec_from_file_location("shortener_lab", Path(__file__).resolve().parents[1] / "lab" / "lab.py")
assert _spec and _spec.loader
_lab = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("shortener_lab", _lab)
_spec.loader.exec_module(_lab)

LAB_KEY = os.environ.get("SHORTENER_LAB_KEY", f"{_lab.DEFAULT_STATE_DIR}/id_ed25519")
SSH_OPTS = ["-i", LAB_KEY, *_lab.SSH_OPTIONS, "-o", "ConnectTimeout=10"]
# Where the shortener role puts the service (ansible/roles/shortener/defaults/main.yml).
APP_SRC = "/opt/shortener/src"
APP_VENV = "/opt/shortener/venv"
APP_ENV = "/etc/shortener/shortener.env"


def ssh(host: str, command: str, *, stdin: bytes | None = None, check: bool = True, timeout: float = 300) -> str:
    """Runs a shell command on the host as root; returns its stdout."""
    proc = subprocess.run(
        ["ssh", *SSH_OPTS, f"root@{host}", command],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"ssh {host} {command[:80]!r} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc.stdout.decode(errors="replace")


def with_app_env(command: str) -> str:
    """A shell command run in the service's directory with its environment file loaded."""
    return f"cd {APP_SRC} && set -a && . {APP_ENV} && set +a && {command}"


def psql(host: str, query: str) -> str:
    """One query as the postgres superuser over the local socket (peer auth); bare output."""
    quoted = query.replace("'", "'\\''")
    return ssh(host, f"runuser -u postgres -- psql -d shortener -XtAqc '{quoted}'").strip()


def load_seed(host: str, seed_dir: Path) -> str:
    """Copies the seed CSVs to the host and loads them with ``python -m app.seed`` (rows that
    are already there are kept, so this is safe to repeat)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("users.csv", "urls.csv", "events.csv"):
            tar.add(seed_dir / name, arcname=name)
    remote = "/tmp/shortener-seed"
    return ssh(
        host,
        f"rm -rf {remote} && mkdir -p {remote} && tar -C {remote} -xf - && "
        + with_app_env(f"{APP_VENV}/bin/python -m app.seed {remote}"),
        stdin=buf.getvalue(),
    )


def machine_facts(host: str | None = None) -> dict[str, str]:
    """nproc, memory, kernel and load average of this machine (the lab host shares them)."""

    def run(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout.strip()

    facts = {
        "nproc": run("nproc"),
        "memory": run('free -g | awk \'/^Mem:/{print $2" GiB total, "$7" GiB available"}\''),
        "kernel": run("uname -r"),
        "cpu": run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "loadavg": run("cut -d' ' -f1-3 /proc/loadavg"),
    }
    if host:
        facts["target"] = host
    return facts


def loadavg1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])
