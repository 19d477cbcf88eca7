"""What the user names: the subnet, hosts as NAME=IP, inventory groups (pure, unit-tested)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lab.defaults import NAME_RE, LabError


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
