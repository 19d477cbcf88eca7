#!/usr/bin/env python3
"""Throw-away Debian 12 lab hosts for the shortener project, made with systemd-nspawn.

Each host boots systemd as PID 1, has a fixed address on the bridge ``shlab0``,
runs sshd with a key made for the lab, and reaches the Debian package mirror
through NAT. See docs/lab.md for usage, what the tool makes, and the pitfalls.

Standard library only: it runs before any virtualenv exists (``make up`` on a
fresh machine) and as root.
"""

# The tool exists to run fixed system commands (ip, iptables, nspawn, ssh) found
# on PATH as root, with arguments it builds itself: no shell, no outside input.
# ruff: noqa: S603, S606, S607

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_BRIDGE = "shlab0"
DEFAULT_STATE_DIR = "/var/lib/shortener-lab"
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

SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
)

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
RULE_COMMENT = "shortener-lab"


class LabError(Exception):
    """A failure to report to the user without a traceback."""


# --------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/lab/test_lab.py)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    name: str
    ip: ipaddress.IPv4Address


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Parse the lab network; the first address is the bridge's (the gateway)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise LabError(f"bad subnet {text!r}: {exc}") from None
    if net.prefixlen > 29:
        raise LabError(f"subnet {net} is too small for a lab")
    return net


def gateway_of(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabError(
            f"bad host name {name!r}: use 2-32 of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
        )
    return name


def parse_host_spec(text: str, net: ipaddress.IPv4Network) -> HostSpec:
    """Parse ``NAME=IP`` and check that IP is a usable host address in ``net``."""
    name, sep, addr = text.partition("=")
    if not sep or not name or not addr:
        raise LabError(f"bad host {text!r}: expected NAME=IP")
    validate_name(name)
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        raise LabError(f"bad address {addr!r} for {name}") from None
    if ip not in net:
        raise LabError(f"{name}: {ip} is not in the lab network {net}")
    if ip in (net.network_address, net.broadcast_address, gateway_of(net)):
        raise LabError(f"{name}: {ip} is reserved in {net} (network, bridge or broadcast)")
    return HostSpec(name, ip)


def parse_host_specs(texts: Sequence[str], net: ipaddress.IPv4Network) -> list[HostSpec]:
    specs = [parse_host_spec(t, net) for t in texts]
    names = [s.name for s in specs]
    ips = [s.ip for s in specs]
    for label, values in (("name", names), ("address", ips)):
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise LabError(f"duplicate {label}: {', '.join(dupes)}")
    return specs


def parse_group_spec(text: str) -> tuple[str, list[str]]:
    """Parse ``GROUP=NAME[,NAME...]`` for ``inventory --group``."""
    group, sep, members = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", group):
        raise LabError(f"bad group {text!r}: expected GROUP=NAME[,NAME...]")
    names = [validate_name(n) for n in members.split(",") if n]
    if not names:
        raise LabError(f"group {group} has no hosts")
    return group, names


def render_network_file(ip: ipaddress.IPv4Address, net: ipaddress.IPv4Network) -> str:
    # The name must sort before Debian's 80-container-host0.network, or the
    # host takes a link-local address and nobody can reach it.
    return (
        "# Written by lab/lab.py: static address on the lab bridge.\n"
        "[Match]\n"
        "Name=host0\n"
        "\n"
        "[Network]\n"
        f"Address={ip}/{net.prefixlen}\n"
        f"Gateway={gateway_of(net)}\n"
        "LinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    )


def render_hosts_file(name: str, ip: ipaddress.IPv4Address) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"{ip}\t{name}\n"
        "\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
    )


def nameservers_from_resolv_conf(text: str) -> list[str]:
    """The machine's nameservers that a host can reach through the NAT.

    Loopback resolvers (systemd-resolved's 127.0.0.53, a local dnsmasq) are
    the machine's own and mean nothing inside a host.
    """
    found: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if not addr.is_loopback and addr.version == 4 and str(addr) not in found:
                found.append(str(addr))
    return found


def render_resolv_conf(nameservers: Sequence[str]) -> str:
    lines = ["# Written by lab/lab.py: the machine's nameservers, reached through the NAT."]
    lines += [f"nameserver {ns}" for ns in nameservers]
    return "\n".join(lines) + "\n"


def render_sources_list(mirror: str, security_mirror: str, suite: str = SUITE) -> str:
    return (
        f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\ndeb {security_mirror} {suite}-security main\n"
    )


def render_inventory(
    hosts: Sequence[tuple[str, str]],
    key_path: str,
    groups: Sequence[tuple[str, Sequence[str]]] = (),
) -> str:
    """An Ansible INI inventory: every host in group ``lab``, plus ``groups``."""
    known = {name for name, _ in hosts}
    out = ["# Lab hosts, written by lab/lab.py inventory.", "[lab]"]
    out += [f"{name} ansible_host={ip}" for name, ip in hosts]
    for group, members in groups:
        missing = [m for m in members if m not in known]
        if missing:
            raise LabError(f"group {group}: not a running lab host: {', '.join(missing)}")
        out += ["", f"[{group}]", *members]
    ssh_args = " ".join(SSH_OPTIONS[:4])
    out += [
        "",
        "[lab:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key_path}",
        f"ansible_ssh_common_args='{ssh_args}'",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    return "\n".join(out) + "\n"


def nspawn_command(name: str, directory: Path, bridge: str) -> list[str]:
    # --register=no --keep-unit: the machine's PID 1 is not systemd, so there is
    # no machined to register with and no manager to ask for a scope.
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={directory}",
        f"--machine={name}",
        f"--hostname={name}",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={bridge}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]


def nat_rules(net: ipaddress.IPv4Network, bridge: str) -> list[list[str]]:
    """iptables rules as (table, chain, match...) for NAT and forwarding."""
    tag = ["-m", "comment", "--comment", RULE_COMMENT]
    return [
        [
            "-t",
            "nat",
            "POSTROUTING",
            "-s",
            str(net),
            "!",
            "-o",
            bridge,
            *tag,
            "-j",
            "MASQUERADE",
        ],
        # Only matter where the FORWARD policy is DROP; harmless otherwise.
        ["-t", "filter", "FORWARD", "-i", bridge, *tag, "-j", "ACCEPT"],
        ["-t", "filter", "FORWARD", "-o", bridge, *tag, "-j", "ACCEPT"],
    ]


def iptables_args(action: str, rule: Sequence[str]) -> list[str]:
    """Put the action (-C/-I/-D) between the table and the chain of a rule."""
    table_opt, table, chain, *match = rule
    return ["iptables", "-w", table_opt, table, action, chain, *match]


def cmdline_matches_nspawn(argv: Sequence[str], name: str) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "systemd-nspawn" and (f"--machine={name}" in argv)


def cmdline_matches_supervisor(argv: Sequence[str], name: str) -> bool:
    return "_supervise" in argv and argv[-1] == name and any(a.endswith("lab.py") for a in argv)


# --------------------------------------------------------------------------
# Process and command helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, check: bool = True, quiet: bool = False, **kw: Any) -> int:
    if quiet:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.run(list(cmd), check=False, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    return proc.returncode


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_matching(pred: Callable[[list[str]], bool]) -> list[int]:
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and pred(read_cmdline(pid))]


def tcp_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH") if port == 22 else True
    except OSError:
        return False


# --------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------


class Lab:
    def __init__(
        self,
        *,
        state_dir: Path,
        machines_dir: Path,
        bridge: str,
        subnet: ipaddress.IPv4Network | None,
        mirror: str,
        security_mirror: str,
        nameservers: list[str] | None,
    ) -> None:
        self.state_dir = state_dir
        self.machines_dir = machines_dir
        self.bridge = bridge
        self._subnet = subnet
        self.mirror = mirror
        self.security_mirror = security_mirror
        self._nameservers = nameservers

    # ---- paths and records ------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.state_dir / "base"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def network_state_path(self) -> Path:
        return self.state_dir / "network.json"

    def machine_dir(self, name: str) -> Path:
        return self.machines_dir / name

    def overlay_dir(self, name: str) -> Path:
        return self.state_dir / "overlay" / name

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def record_path(self, name: str) -> Path:
        return self.hosts_dir / f"{name}.json"

    def load_record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(name).read_text())
        except FileNotFoundError:
            return None

    def records(self) -> list[dict[str, Any]]:
        if not self.hosts_dir.is_dir():
            return []
        recs = []
        for path in sorted(self.hosts_dir.glob("*.json")):
            # `list` does not take the lock: a host may be going away meanwhile.
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                recs.append(json.loads(path.read_text()))
        return sorted(recs, key=lambda r: ipaddress.IPv4Address(r["ip"]))

    def network_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.network_state_path.read_text())
        except FileNotFoundError:
            return None

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """Flag/env first, then what the running bridge was made with, then the default."""
        if self._subnet is not None:
            return self._subnet
        state = self.network_state()
        if state:
            return parse_subnet(state["subnet"])
        return parse_subnet(DEFAULT_SUBNET)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # Two `up`s at once (two Molecule scenarios, make and a developer) must
        # not build the base twice or race on the bridge.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- processes ------------------------------------------------------
    def supervisor_pids(self, name: str) -> list[int]:
        return pids_matching(lambda argv: cmdline_matches_supervisor(argv, name))

    def nspawn_pids(self, name: str) -> list[int]:
        return pids_matching(lambda argv: cmdline_matches_nspawn(argv, name))

    def init_pid(self, name: str) -> int | None:
        """The host's PID 1 as the machine sees it.

        Found by its root directory rather than as the child of nspawn: when
        nspawn dies by SIGKILL the host's systemd lives on as an orphan that
        holds the veth, and a new nspawn for the same host fails until it dies.
        """
        try:
            want = os.stat(self.machine_dir(name))
        except FileNotFoundError:
            return None
        for pid in all_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(x for x in status.splitlines() if x.startswith("NSpid:"))
                if len(nspid.split()) < 3 or nspid.split()[-1] != "1":
                    continue
                root = os.stat(f"/proc/{pid}/root")
            except (OSError, StopIteration):
                continue
            if (root.st_dev, root.st_ino) == (want.st_dev, want.st_ino):
                return pid
        return None

    def state_of(self, name: str) -> str:
        rec = self.load_record(name)
        sup, nsp = self.supervisor_pids(name), self.nspawn_pids(name)
        if not sup and not nsp:
            return "orphaned" if self.init_pid(name) else "stopped"
        if not nsp:
            return "rebooting"
        if rec and tcp_open(rec["ip"], 22):
            return "running" if sup else "running (unsupervised)"
        return "booting"

    # ---- machine setup ----------------------------------------------------
    def ensure_tools(self) -> None:
        missing = sorted({pkg for cmd, pkg in TOOL_PACKAGES.items() if not shutil.which(cmd)})
        if not missing:
            return
        t0 = time.monotonic()
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            # Quiet unless it fails: the output is long and says nothing useful.
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
        log(f"tools installed in {time.monotonic() - t0:.1f} s")

    def ensure_key(self) -> None:
        if self.key_path.exists():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "shortener-lab",
                "-f",
                str(self.key_path),
            ]
        )

    def ensure_base(self) -> None:
        if (self.base_dir / ".complete").exists():
            return
        t0 = time.monotonic()
        tmp = self.state_dir / "base.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        if self.base_dir.exists():
            shutil.rmtree(self.base_dir)
        log(f"building the Debian {SUITE} base image (once; about a minute)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(tmp),
                self.mirror,
            ],
            stdout=subprocess.DEVNULL,
        )
        (tmp / "etc/apt/sources.list").write_text(render_sources_list(self.mirror, self.security_mirror))
        # networkd gives each host its static address; the apt timers would take
        # the dpkg lock in the middle of a converge after a reboot.
        run(
            ["systemctl", f"--root={tmp}", "enable", "systemd-networkd.service"],
            quiet=True,
        )
        run(
            [
                "systemctl",
                f"--root={tmp}",
                "mask",
                "apt-daily.timer",
                "apt-daily-upgrade.timer",
            ],
            quiet=True,
        )
        # Host keys and machine-id are per host: made when a host is created.
        for key in (tmp / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "etc/machine-id").write_text("")
        with contextlib.suppress(FileNotFoundError):
            (tmp / "var/lib/dbus/machine-id").unlink()
        run(["chroot", str(tmp), "apt-get", "clean"], quiet=True)
        (tmp / ".complete").write_text(f"{SUITE} {self.mirror}\n")
        tmp.rename(self.base_dir)
        log(f"base image ready in {time.monotonic() - t0:.1f} s")

    def nameservers(self) -> list[str]:
        if self._nameservers:
            return self._nameservers
        found: list[str] = []
        for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
            with contextlib.suppress(OSError):
                found = nameservers_from_resolv_conf(Path(path).read_text())
            if found:
                return found
        raise LabError("no usable nameserver on this machine: pass --nameserver")

    def ensure_network(self) -> None:
        net = self.subnet
        state = self.network_state()
        if state and state["subnet"] != str(net) and self.records():
            raise LabError(f"the lab runs on {state['subnet']} with hosts in it; `down` them before switching to {net}")
        gw = f"{gateway_of(net)}/{net.prefixlen}"
        if run(["ip", "link", "show", self.bridge], check=False, quiet=True) != 0:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
        addrs = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", self.bridge],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in addrs.splitlines():
            cur = line.split()[3]
            if cur != gw:
                run(["ip", "addr", "del", cur, "dev", self.bridge])
        if f" {gw} " not in addrs:
            run(["ip", "addr", "add", gw, "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

        saved: dict[str, str] = dict(state.get("sysctl_before", {})) if state else {}
        wanted = {"net.ipv4.ip_forward": 1, **SYSCTL_MINIMUMS}
        for key, minimum in wanted.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            current = path.read_text().split()[0]
            if int(current) < minimum:
                saved.setdefault(key, current)
                path.write_text(f"{minimum}\n")

        if state and state["subnet"] != str(net):
            self._delete_rules(parse_subnet(state["subnet"]))
        for rule in nat_rules(net, self.bridge):
            if run(iptables_args("-C", rule), check=False, quiet=True) != 0:
                run(iptables_args("-I", rule))
        self.network_state_path.write_text(
            json.dumps(
                {"subnet": str(net), "bridge": self.bridge, "sysctl_before": saved},
                indent=2,
            )
            + "\n"
        )

    def _delete_rules(self, net: ipaddress.IPv4Network) -> None:
        for rule in nat_rules(net, self.bridge):
            while run(iptables_args("-C", rule), check=False, quiet=True) == 0:
                run(iptables_args("-D", rule))

    def teardown_network(self) -> None:
        state = self.network_state()
        net = parse_subnet(state["subnet"]) if state else self.subnet
        if shutil.which("iptables"):
            self._delete_rules(net)
        if run(["ip", "link", "show", self.bridge], check=False, quiet=True) == 0:
            run(["ip", "link", "del", self.bridge])
        for key, value in (state or {}).get("sysctl_before", {}).items():
            (Path("/proc/sys") / key.replace(".", "/")).write_text(f"{value}\n")
        with contextlib.suppress(FileNotFoundError):
            self.network_state_path.unlink()

    def create_host(self, spec: HostSpec) -> None:
        """Copy the base into a new host and give it its identity."""
        name, ip = spec.name, spec.ip
        target = self.machine_dir(name)
        if target.exists():
            raise LabError(f"{target} exists but is not a lab host; move it away first")
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path(name).write_bytes(b"")
        # The record comes first so that `down` cleans up a half-made host.
        self.record_path(name).write_text(
            json.dumps(
                {
                    "name": name,
                    "ip": str(ip),
                    "subnet": str(self.subnet),
                    "created": time.time(),
                },
                indent=2,
            )
            + "\n"
        )
        self.machines_dir.mkdir(parents=True, exist_ok=True)
        storage = "overlay"
        try:
            self.mount_overlay(name)
        except LabError as exc:
            # A kernel without overlayfs (or a state dir on a file system that
            # cannot be an upper layer): a full copy works everywhere.
            log(f"{name}: {exc}; copying the base instead")
            with contextlib.suppress(OSError):
                target.rmdir()
            shutil.rmtree(self.overlay_dir(name), ignore_errors=True)
            run(["cp", "-a", "--reflink=auto", str(self.base_dir), str(target)])
            storage = "copy"
        rec = json.loads(self.record_path(name).read_text())
        self.record_path(name).write_text(json.dumps({**rec, "storage": storage}, indent=2) + "\n")
        (target / ".complete").unlink()
        etc = target / "etc"
        (etc / "hostname").write_text(f"{name}\n")
        (etc / "hosts").write_text(render_hosts_file(name, ip))
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (etc / "systemd/network").mkdir(parents=True, exist_ok=True)
        (etc / "systemd/network/10-host0.network").write_text(render_network_file(ip, self.subnet))
        resolv = etc / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text(render_resolv_conf(self.nameservers()))
        run(["ssh-keygen", "-A", "-f", str(target)], quiet=True)
        ssh_dir = target / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(Path(f"{self.key_path}.pub").read_text())
        auth.chmod(0o600)

    def mount_overlay(self, name: str) -> None:
        """Mount the host's root: the shared read-only base under its own upper layer.

        Creating a host is then instant and costs no disk, where a copy of the
        base took 5-15 s per host on ext4 (no reflinks) with several at once.
        The base must never change while hosts use it, so it is built once and
        removed only by `down --purge` when no host is left.
        """
        target = self.machine_dir(name)
        if os.path.ismount(target):
            return
        upper, work = self.overlay_dir(name) / "upper", self.overlay_dir(name) / "work"
        for d in (upper, work, target):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.base_dir},upperdir={upper},workdir={work}"
        if run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=False) != 0:
            raise LabError(f"overlay mount on {target} failed")

    def remove_root(self, name: str) -> None:
        target = self.machine_dir(name)
        if os.path.ismount(target):
            for _ in range(10):
                if run(["umount", str(target)], check=False, quiet=True) == 0:
                    break
                time.sleep(0.5)
            else:
                run(["umount", "--lazy", str(target)])
        rec = self.load_record(name) or {}
        if rec.get("storage", "copy") == "overlay" or self.overlay_dir(name).exists():
            with contextlib.suppress(FileNotFoundError, OSError):
                target.rmdir()
            shutil.rmtree(self.overlay_dir(name), ignore_errors=True)
        if target.exists() and not os.path.ismount(target):
            shutil.rmtree(target)

    def launch(self, name: str) -> None:
        """Start the supervisor that boots the host, in its own session."""
        with open(self.log_path(name), "ab") as logf:
            # setsid: the host must outlive this command, the shell, make and
            # the CI step that ran it.
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "_supervise",
                    "--state-dir",
                    str(self.state_dir),
                    "--machines-dir",
                    str(self.machines_dir),
                    "--bridge",
                    self.bridge,
                    name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )

    # ---- commands -------------------------------------------------------
    def up(self, specs: Sequence[HostSpec], timeout: float) -> None:
        t0 = time.monotonic()
        with self.locked():
            self.ensure_tools()
            self.ensure_key()
            self.ensure_base()
            self.ensure_network()
            for spec in specs:
                rec = self.load_record(spec.name)
                if rec and rec["ip"] != str(spec.ip):
                    raise LabError(f"{spec.name} exists with address {rec['ip']}; `down` it first")
                for other in self.records():
                    if other["name"] != spec.name and other["ip"] == str(spec.ip):
                        raise LabError(f"{spec.ip} is taken by {other['name']}")
            new = [spec for spec in specs if self.load_record(spec.name) is None]
            if new:
                t1 = time.monotonic()
                # Host keys (RSA above all) take about a second per host: in parallel.
                with ThreadPoolExecutor(max_workers=len(new)) as pool:
                    list(pool.map(self.create_host, new))
                names = ", ".join(s.name for s in new)
                log(f"{names}: created from the base in {time.monotonic() - t1:.1f} s")
            for spec in specs:
                rec = self.load_record(spec.name)
                if self.supervisor_pids(spec.name) or self.nspawn_pids(spec.name):
                    log(f"{spec.name}: already up")
                    continue
                if rec and rec.get("storage") == "overlay":
                    # after a reboot of the machine itself
                    self.mount_overlay(spec.name)
                if not (self.machine_dir(spec.name) / "etc/machine-id").exists():
                    raise LabError(f"{spec.name}: its root is gone; `down {spec.name}` and `up` again")
                self.kill_orphan(spec.name)
                self.launch(spec.name)
                log(f"{spec.name}: booting at {spec.ip}")
        # Boot in parallel: every host was launched above, now wait for all.
        self._wait_all([s.name for s in specs], timeout)
        log(f"up: {', '.join(s.name for s in specs)} in {time.monotonic() - t0:.1f} s")

    def restart(self, names: Sequence[str], timeout: float) -> None:
        """Power hosts off and boot them again, keeping their disks."""
        with self.locked():
            for name in names:
                self.require(name)
            for name in names:
                self.stop(name)
                self.launch(name)
                log(f"{name}: booting again")
        self._wait_all(names, timeout)

    def _wait_all(self, names: Sequence[str], timeout: float) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            results = list(pool.map(lambda n: self._wait_quiet(n, timeout), names))
        failed = [name for name, err in results if err]
        for name, err in results:
            if err:
                log(f"{name}: {err}")
        if failed:
            raise LabError(f"not up: {', '.join(failed)} (logs in {self.state_dir}/NAME.log)")

    def _wait_quiet(self, name: str, timeout: float) -> tuple[str, str | None]:
        try:
            self.wait(name, timeout)
        except LabError as exc:
            return name, str(exc)
        return name, None

    def wait(self, name: str, timeout: float) -> None:
        """Until sshd takes the lab key, then until systemd has finished booting."""
        rec = self.require(name)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            if tcp_open(rec["ip"], 22) and self.ssh_run(name, ["true"], timeout=10) == 0:
                break
            if not self.supervisor_pids(name) and not self.nspawn_pids(name):
                tail = self.log_tail(name)
                raise LabError(f"its nspawn is not running; last log lines:\n{tail}")
            if time.monotonic() > deadline:
                raise LabError(f"sshd did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        t_ssh = time.monotonic() - t0
        # "running" or "degraded" both mean the boot is over; Ansible should not
        # race units that are still starting.
        left = max(5.0, deadline - time.monotonic())
        proc = subprocess.run(
            self.ssh_argv(name, ["systemctl", "is-system-running", "--wait"]),
            capture_output=True,
            text=True,
            timeout=left,
            check=False,
        )
        log(
            f"{name}: ssh after {t_ssh:.1f} s, systemd {proc.stdout.strip() or '?'} after {time.monotonic() - t0:.1f} s"
        )

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def require(self, name: str) -> dict[str, Any]:
        rec = self.load_record(validate_name(name))
        if rec is None:
            raise LabError(f"no lab host {name!r} (see `list`)")
        return rec

    def ssh_argv(self, name: str, cmd: Sequence[str], tty: bool = False) -> list[str]:
        rec = self.require(name)
        argv = ["ssh", *SSH_OPTIONS, "-o", "ConnectTimeout=5", "-i", str(self.key_path)]
        if tty:
            argv.append("-t")
        return [*argv, f"root@{rec['ip']}", *cmd]

    def ssh_run(self, name: str, cmd: Sequence[str], timeout: float) -> int:
        try:
            return run(self.ssh_argv(name, cmd), check=False, quiet=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 255

    def stop(self, name: str, timeout: float = 60.0) -> None:
        """Power the host off; kill whatever is left after ``timeout``."""
        sup = self.supervisor_pids(name)
        nsp = self.nspawn_pids(name)
        # SIGTERM to the supervisor stops its loop and is passed on to nspawn,
        # which powers the host off cleanly.
        for pid in sup or nsp:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.supervisor_pids(name) or self.nspawn_pids(name):
            if time.monotonic() > deadline:
                log(f"{name}: no clean poweroff within {timeout:.0f} s, killing it")
                for pid in self.supervisor_pids(name) + self.nspawn_pids(name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                break
            time.sleep(0.3)
        self.kill_orphan(name)

    def kill_orphan(self, name: str) -> None:
        """Kill a host whose nspawn is gone; its PID 1 takes the namespace with it."""
        # Right after nspawn exits its PID 1 may still be on its way out.
        for _ in range(15):
            if self.init_pid(name) is None:
                return
            time.sleep(0.2)
        for _ in range(50):
            pid = self.init_pid(name)
            if pid is None:
                return
            log(f"{name}: killing the orphaned host (PID {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        raise LabError(f"{name}: its PID 1 does not die")

    def down(self, names: Sequence[str], purge: bool) -> None:
        with self.locked():
            everything = not names
            if everything:
                names = [r["name"] for r in self.records()]
            for name in names:
                validate_name(name)
            known = [n for n in names if self.load_record(n) is not None]
            for name in sorted(set(names) - set(known)):
                log(f"{name}: not a lab host, nothing to do")
            t0 = time.monotonic()
            # Power them off at once: a clean poweroff takes seconds each.
            with ThreadPoolExecutor(max_workers=max(1, len(known))) as pool:
                list(pool.map(self.stop, known))
            for name in known:
                self.remove_root(name)
                self.record_path(name).unlink()
            if known:
                log(f"down: {', '.join(known)} in {time.monotonic() - t0:.1f} s")
            if everything:
                self.teardown_network()
                for name in [p.stem for p in self.state_dir.glob("*.log")]:
                    self.log_path(name).unlink()
                for path in (self.key_path, Path(f"{self.key_path}.pub")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                for path in (self.hosts_dir, self.state_dir / "overlay"):
                    with contextlib.suppress(OSError):
                        path.rmdir()
                if purge:
                    for path in (self.base_dir, self.state_dir / "base.tmp"):
                        if path.exists():
                            shutil.rmtree(path)
                log(
                    f"lab removed: hosts, bridge {self.bridge}, NAT rules"
                    + (", base image" if purge else " (base image kept; --purge removes it)")
                )

    def list_hosts(self) -> list[tuple[str, str, str]]:
        return [(r["name"], r["ip"], self.state_of(r["name"])) for r in self.records()]

    def supervise(self, name: str) -> int:
        """Run nspawn for one host; boot it again when it reboots itself."""
        stopping = False
        child: subprocess.Popen[bytes] | None = None

        def on_term(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cmd = nspawn_command(name, self.machine_dir(name), self.bridge)
        boot = 0
        while not stopping:
            boot += 1
            print(
                f"[lab {time.strftime('%F %T')}] boot {boot}: {shlex.join(cmd)}",
                flush=True,
            )
            child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            rc = child.wait()
            print(f"\n[lab {time.strftime('%F %T')}] nspawn exited with {rc}", flush=True)
            if rc != NSPAWN_REBOOT_EXIT:
                # 0 is a poweroff (in the host, or ours from `down`); anything
                # else is a failure that a loop would only repeat: `up` boots
                # the host again.
                if rc != 0:
                    self.kill_orphan(name)
                return 0 if rc == 0 else 1
            time.sleep(0.5)
        return 0


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--subnet",
        default=None,
        help=f"lab network (env SHORTENER_LAB_SUBNET; default {DEFAULT_SUBNET}); the bridge takes its first address",
    )
    common.add_argument(
        "--state-dir",
        default=None,
        help=f"env SHORTENER_LAB_STATE_DIR; default {DEFAULT_STATE_DIR}",
    )
    common.add_argument("--machines-dir", default=DEFAULT_MACHINES_DIR, help=argparse.SUPPRESS)
    common.add_argument(
        "--bridge",
        default=None,
        help=f"env SHORTENER_LAB_BRIDGE; default {DEFAULT_BRIDGE}",
    )

    parser = argparse.ArgumentParser(
        prog="lab.py",
        description="Throw-away Debian 12 lab hosts with systemd-nspawn.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", parents=[common], help="create and boot hosts (idempotent)")
    p.add_argument("hosts", nargs="+", metavar="NAME=IP")
    p.add_argument(
        "--mirror",
        default=None,
        help="Debian mirror for the base image and the hosts' apt (env SHORTENER_LAB_MIRROR)",
    )
    p.add_argument(
        "--security-mirror",
        default=None,
        help="Debian security mirror (env SHORTENER_LAB_SECURITY_MIRROR)",
    )
    p.add_argument(
        "--nameserver",
        action="append",
        default=None,
        help="nameserver for the hosts (default: the machine's own)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for each host to boot (default 300)",
    )

    p = sub.add_parser(
        "down",
        parents=[common],
        help="stop and remove hosts; with no names, the whole lab",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--purge",
        action="store_true",
        help="with no names: also remove the cached base image",
    )

    sub.add_parser("list", parents=[common], help="hosts with address and state")

    p = sub.add_parser("shell", parents=[common], help="interactive root shell in a host")
    p.add_argument("name", metavar="NAME")

    p = sub.add_parser("ssh", parents=[common], help="ssh to a host as root, optionally run CMD")
    p.add_argument("name", metavar="NAME")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")

    p = sub.add_parser("restart", parents=[common], help="power hosts off and boot them again")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", type=float, default=300.0)

    p = sub.add_parser("wait", parents=[common], help="wait until a host's sshd answers")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", type=float, default=300.0)

    p = sub.add_parser("inventory", parents=[common], help="Ansible INI inventory of the running hosts")
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP=NAME[,NAME...]",
        help="also put hosts into GROUP (repeatable)",
    )
    p.add_argument("--all", action="store_true", help="include hosts that are not running")

    p = sub.add_parser("_supervise", parents=[common])
    p.add_argument("name")
    return parser


def lab_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Lab:
    env = dict(os.environ) if env is None else env
    subnet_text = args.subnet or env.get("SHORTENER_LAB_SUBNET")
    return Lab(
        state_dir=Path(args.state_dir or env.get("SHORTENER_LAB_STATE_DIR") or DEFAULT_STATE_DIR),
        machines_dir=Path(args.machines_dir),
        bridge=args.bridge or env.get("SHORTENER_LAB_BRIDGE") or DEFAULT_BRIDGE,
        subnet=parse_subnet(subnet_text) if subnet_text else None,
        mirror=getattr(args, "mirror", None) or env.get("SHORTENER_LAB_MIRROR") or DEFAULT_MIRROR,
        security_mirror=getattr(args, "security_mirror", None)
        or env.get("SHORTENER_LAB_SECURITY_MIRROR")
        or DEFAULT_SECURITY_MIRROR,
        nameservers=getattr(args, "nameserver", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lab = lab_from_args(args)
        if args.command not in ("list", "inventory") and os.geteuid() != 0:
            raise LabError("run as root (it makes bridges, NAT rules and containers)")
        if args.command == "up":
            lab.up(parse_host_specs(args.hosts, lab.subnet), args.timeout)
        elif args.command == "down":
            if args.purge and args.names:
                raise LabError("--purge removes the base under every host: only with no names")
            lab.down(args.names, args.purge)
        elif args.command == "list":
            rows = lab.list_hosts()
            print(f"{'NAME':<16} {'IP':<15} STATE")
            for name, ip, state in rows:
                print(f"{name:<16} {ip:<15} {state}")
        elif args.command == "restart":
            lab.restart(args.names, args.timeout)
        elif args.command == "wait":
            for name in args.names:
                lab.wait(name, args.timeout)
        elif args.command == "inventory":
            hosts = [(n, ip) for n, ip, st in lab.list_hosts() if args.all or st.startswith("running")]
            groups = [parse_group_spec(g) for g in args.group]
            sys.stdout.write(render_inventory(hosts, str(lab.key_path), groups))
        elif args.command == "ssh":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            os.execvp("ssh", lab.ssh_argv(args.name, cmd, tty=not cmd and sys.stdin.isatty()))
        elif args.command == "shell":
            rec = lab.require(args.name)
            if tcp_open(rec["ip"], 22):
                os.execvp("ssh", lab.ssh_argv(args.name, [], tty=True))
            # sshd not up yet (or broken): enter the host's namespaces directly.
            pid = lab.init_pid(args.name)
            if pid is None:
                raise LabError(f"{args.name} is not running")
            os.execvp("nsenter", ["nsenter", "-t", str(pid), "-a", "/bin/bash", "-l"])
        elif args.command == "_supervise":
            return lab.supervise(args.name)
    except LabError as exc:
        log(f"error: {exc}")
        return 1
    except OSError as exc:
        if exc.errno == errno.EPERM:
            log(f"error: {exc} (run as root)")
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
