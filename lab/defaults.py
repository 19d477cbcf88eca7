"""The lab tool's defaults and fixed facts (the subnet and the state directory are labkit's)."""

from __future__ import annotations

import re

from labkit.hosts import STATE_DIR as DEFAULT_STATE_DIR
from labkit.hosts import SUBNET as DEFAULT_SUBNET

__all__ = ["DEFAULT_STATE_DIR", "DEFAULT_SUBNET"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_BRIDGE = "shlab0"
DEFAULT_MACHINES_DIR = "/var/lib/machines"
SUITE = "bookworm"

# What the hosts need before Ansible can manage them; everything else comes
# through the roles, as on a real VM.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "ca-certificates",
    "sudo",
)

# command on the machine -> Debian package that provides it
TOOL_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
    "ip": "iproute2",
}

# systemd-nspawn exits with 133 when the host asked for a reboot
# (systemd-nspawn@.service restarts on exactly this status).
NSPAWN_REBOOT_EXIT = 133

# systemd in every host takes inotify instances from the one root user of the
# machine; the kernel default of 128 runs out at about five hosts and systemd
# then fails to start units with "Too many open files".
SYSCTL_MINIMUMS = {
    "fs.inotify.max_user_instances": 8192,
    "fs.inotify.max_user_watches": 524288,
}

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
RULE_COMMENT = "shortener-lab"


class LabError(Exception):
    """A failure to report to the user without a traceback."""
