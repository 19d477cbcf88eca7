"""The files the tool writes into a host and the inventory it prints (pure, unit-tested)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lab.defaults import SUITE, LabError
from lab.specs import gateway_of
from labkit.ssh import OPTIONS


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
    ssh_args = " ".join(OPTIONS[:4])
    out += [
        "",
        "[lab:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key_path}",
        f"ansible_ssh_common_args='{ssh_args}'",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    return "\n".join(out) + "\n"
