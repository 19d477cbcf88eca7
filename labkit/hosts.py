"""Where the lab is: its subnet, `make up`'s host, its state (one home for each), inventory lookups."""

from __future__ import annotations

import functools
import ipaddress
import os
from typing import Any

SUBNET = "10.213.0.0/24"
# `make up`'s all-in-one host (ansible/inventories/lab): what the load tests and the
# walk-through aim at unless told otherwise.
AIO_NAME = "lab-aio"
AIO_ADDRESS = "10.213.0.10"
DEFAULT_TARGET = f"http://{AIO_ADDRESS}"
# The fresh host `make restore-drill` (and lab/rpo.py) restores onto: made and removed
# by each run.
DRILL_NAME = "lab-drill"
DRILL_ADDRESS = "10.213.0.11"

STATE_DIR = "/var/lib/shortener-lab"
# The key lab.py puts into every host's /root/.ssh/authorized_keys.
SSH_KEY = os.environ.get("SHORTENER_LAB_KEY", f"{STATE_DIR}/id_ed25519")


def is_lab_address(address: str | None) -> bool:
    """True for an address on the lab's own subnet (a host lab.py made), False for anything else."""
    try:
        return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(SUBNET)
    except ValueError:
        return False


@functools.cache
def inventory() -> Any:
    """Molecule's Ansible inventory of the scenario under test (testinfra's runner over it)."""
    import testinfra.utils.ansible_runner

    return testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def hosts_of(group: str = "all") -> list[str]:
    return inventory().get_hosts(group)


def address_of(name: str) -> str:
    return inventory().get_variables(name)["ansible_host"]


def testinfra_host(name: str) -> Any:
    """A testinfra host for one inventory host (to run commands on another host than the test's)."""
    import testinfra

    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")
