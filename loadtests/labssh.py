"""The few host-side steps the load tests share (over labkit.ssh): a query, load the seed,
read machine facts."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from labkit.ssh import ssh

__all__ = ["limits_exempt", "load_seed", "machine_facts", "psql", "ssh", "with_app_env"]

# Where the shortener role puts the service (ansible/roles/shortener/defaults/main.yml).
APP_SRC = "/opt/shortener/src"
APP_VENV = "/opt/shortener/venv"
APP_ENV = "/etc/shortener/shortener.env"
# The schema owner's URL (the shortener role's migrate.env): the service's own role may not
# create tables, so whatever migrates (app.seed does first) runs with it.
APP_MIGRATE_ENV = "/etc/shortener/migrate.env"


def with_app_env(command: str, migrate: bool = False) -> str:
    """A shell command run in the service's directory with its environment file loaded, and
    the schema owner's too (``SHORTENER_MIGRATE_DATABASE_URL``) if ``migrate``."""
    files = [APP_ENV, APP_MIGRATE_ENV] if migrate else [APP_ENV]
    loads = " && ".join(f". {f}" for f in files)
    return f"cd {APP_SRC} && set -a && {loads} && set +a && {command}"


def psql(host: str, query: str) -> str:
    """One query as the postgres superuser over the local socket (peer auth); bare output."""
    quoted = query.replace("'", "'\\''")
    return ssh(host, f"runuser -u postgres -- psql -d shortener -XtAqc '{quoted}'").strip()


# Included by the nginx role's geo block of exempt clients: only a comment after a converge.
LIMIT_EXEMPT_FILE = "/etc/nginx/limit-exempt.conf"


def own_address(host: str) -> str:
    """This machine's source address towards ``host`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 80))
        return probe.getsockname()[0]


@contextlib.contextmanager
def limits_exempt(host: str) -> Iterator[str]:
    """Nginx's abuse limits lifted for this machine's address on ``host`` for a run, put back
    afterwards. All of a load test's clients share one address, which no real crowd does:
    limit_conn (512 requests in progress per address) would shape the figures instead of the
    stack. Yields the exempted address."""
    address = own_address(host)
    reload = "nginx -t -q && systemctl reload nginx"
    ssh(host, f"printf '%s 1;\\n' {address} >> {LIMIT_EXEMPT_FILE} && {reload}")
    time.sleep(1)  # the reload's new workers take over
    try:
        yield address
    finally:
        ssh(host, f"sed -i '/^{re.escape(address)} 1;$/d' {LIMIT_EXEMPT_FILE} && {reload}")


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
        + with_app_env(f"{APP_VENV}/bin/python -m app.seed {remote}", migrate=True),
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
