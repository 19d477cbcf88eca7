"""Every daemon comes back by itself: `kill -9` of each unit's main process under traffic.

Runs in Molecule's verify step (testinfra over Molecule's Ansible inventory), or by hand against
any converged inventory:
    MOLECULE_INVENTORY_FILE=<inventory> python -m pytest molecule/default/tests/test_restart.py

For every unit the roles install on the host (test_hardening's list), one at a time, while a
client follows a cached short link at a steady rate: SIGKILL to the unit's MainPID, then the
unit must be active again under a new main process, and the service healthy, within
RECOVERY_BOUND seconds. Where the design keeps cached redirects going (a database-side daemon,
an instance behind Nginx's retries, monitoring), no redirect may fail meanwhile; the others
(Nginx itself, Redis) may fail only until they are back. The figures are printed (pytest -s).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests
import testinfra.utils.ansible_runner
from test_hardening import SOCKET_OF, units_of

from labkit.traffic import Traffic

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

# RestartSec (1-2 s) plus the daemon's own start (PostgreSQL's crash recovery, Prometheus's
# WAL replay) on a loaded lab host.
RECOVERY_BOUND = 30.0
# Where a failed redirect is a defect: the cached link needs neither the database nor the
# monitoring, and Nginx retries an idempotent request on the next instance.
NO_REDIRECT_LOST = (
    "postgresql@",
    "pgbouncer",
    "prometheus",
    "discord-sink",
    "systemd-journal-gatewayd",
    "shortener@",
    "shortener-clickworker",
)
RATE = 20  # redirects per second at most (a pause of 1/RATE after each answer)


def main_pid(host, unit: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}") or 0)


def back_after_kill(host, unit: str) -> float:
    """SIGKILL the unit's main process; seconds until it runs again under a new one."""
    pid = main_pid(host, unit)
    assert pid > 0, f"{unit} has no main process to kill"
    start = time.monotonic()
    host.run(f"kill -9 {pid}")
    while time.monotonic() - start < RECOVERY_BOUND:
        state = host.check_output(f"systemctl show -p ActiveState --value {unit}")
        new = main_pid(host, unit)
        if state == "active" and new not in (0, pid):
            return time.monotonic() - start
        time.sleep(0.3)
    pytest.fail(f"{unit} not back {RECOVERY_BOUND:.0f} s after kill -9 of {pid}")


def healthy_within(address: str, start: float) -> float:
    while time.monotonic() - start < RECOVERY_BOUND:
        try:
            if requests.get(f"http://{address}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"/health not 200 within {RECOVERY_BOUND:.0f} s")


def test_every_daemon_comes_back_after_kill_9_under_traffic(host, api):
    address = host.ansible.get_variables()["ansible_host"]
    made = api.post(f"http://{address}/urls", json={"original_url": f"https://example.com/restart/{uuid.uuid4()}"})
    assert made.status_code == 201, made.text
    link = f"http://{address}/{made.json()['short_code']}"
    assert requests.get(link, allow_redirects=False, timeout=5).status_code == 302  # now cached
    # A socket-activated daemon runs only once something connected: the console's login page.
    host.run(f"curl -sk -o /dev/null https://{address}:8443/logs/")
    units = [unit for unit, _ in units_of(host) if unit not in SOCKET_OF or main_pid(host, unit)]
    figures, failures = [], []
    with Traffic(link, pause=1 / RATE, timeout=2.0) as traffic:
        for unit in units:
            start = time.monotonic()
            back = back_after_kill(host, unit)
            healthy = healthy_within(address, start)
            time.sleep(1)  # answers in flight at the recovery
            failed = traffic.failed_since(start)
            figures.append(f"{unit}: back in {back:.1f} s, /health 200 after {healthy:.1f} s, {failed} failed")
            if failed and unit.startswith(NO_REDIRECT_LOST):
                failures.append(f"{unit}: {failed} cached redirects failed")
        total = len(traffic.answers)
    print("\n".join([*figures, f"{total} redirects sent at {RATE}/s"]))
    assert not failures, failures
