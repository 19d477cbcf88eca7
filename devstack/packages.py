"""The Debian packages the dev stack runs: found where Debian puts them, installed if missing."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from devstack.process import StackError, log, run

APT_PACKAGES = ("postgresql", "pgbouncer", "redis-server")
PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_pg_bindirs() -> list[Path]:
    """Server bin directories of every installed PostgreSQL, newest first."""
    found = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres"))
    ]
    return sorted(found, key=lambda bindir: _version_key(bindir.parent), reverse=True)


def _find_executable(name: str, candidates: Sequence[str]) -> str | None:
    # /usr/sbin is not on a non-root user's PATH, where pgbouncer lives.
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def find_pgbouncer() -> str | None:
    return _find_executable("pgbouncer", PGBOUNCER_CANDIDATES)


def find_redis_server() -> str | None:
    return _find_executable("redis-server", REDIS_CANDIDATES)


def missing_packages() -> list[str]:
    missing = []
    if not find_pg_bindirs():
        missing.append("postgresql")
    if find_pgbouncer() is None:
        missing.append("pgbouncer")
    if find_redis_server() is None:
        missing.append("redis-server")
    return missing


def ensure_packages() -> list[str]:
    """Install PostgreSQL, PgBouncer and Redis from Debian if any is missing.

    Returns the packages that were installed (empty when nothing was needed).
    The packages' own services are kept from starting during the install by a
    temporary ``policy-rc.d``; they would listen on the standard ports, which
    this harness never uses.
    """
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise StackError(
            f"missing packages {' '.join(missing)}; install them as root: "
            f"apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)}"
        )
    if shutil.which("apt-get") is None:
        raise StackError(f"missing packages {' '.join(missing)} and no apt-get to install them")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="l")
    apt_options = [
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        # Exit code 101 tells invoke-rc.d "action not allowed": the packages
        # install without starting (or enabling at runtime) their daemons.
        policy.write_text("#!/bin/sh\n# temporary, written by devstack/packages.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", *apt_options, "update"], env=env, timeout=600)
        run(
            ["apt-get", *apt_options, "install", "-y", "--no-install-recommends", *APT_PACKAGES],
            env=env,
            timeout=1200,
        )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still_missing = missing_packages()
    if still_missing:
        raise StackError(f"still missing after apt-get install: {' '.join(still_missing)}")
    return missing
