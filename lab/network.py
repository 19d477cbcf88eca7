"""The lab's bridge, its NAT and forwarding rules, and the sysctls the hosts need."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S603, S607
import contextlib
import ipaddress
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lab.defaults import RULE_COMMENT, SYSCTL_MINIMUMS, LabError
from lab.procs import run
from lab.specs import gateway_of, parse_subnet
from lab.state import LabState


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


class NetworkMixin(LabState):
    """Bridge, NAT and sysctls: made idempotently by `up`, undone by `down` with no names."""

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
