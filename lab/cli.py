"""The tool's command line: ``python3 lab/lab.py COMMAND ...`` (docs/lab.md)."""

from __future__ import annotations

# The tool runs fixed system commands found on PATH as root, with arguments it builds itself:
# no shell, no outside input.
# ruff: noqa: S606, S607
import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.defaults import (
    DEFAULT_BRIDGE,
    DEFAULT_MACHINES_DIR,
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    DEFAULT_STATE_DIR,
    DEFAULT_SUBNET,
    LabError,
)
from lab.hosts import Lab
from lab.procs import log
from lab.render import render_inventory
from lab.specs import parse_group_spec, parse_host_specs, parse_subnet
from labkit.probes import port_open


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes (where the lab is)."""
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

    return common


def _add_up(sub: Any, common: argparse.ArgumentParser) -> None:
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


def _add_down(sub: Any, common: argparse.ArgumentParser) -> None:
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


def _add_host_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """list, shell, ssh, restart, wait, inventory and the internal _supervise."""
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


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="lab.py",
        description="Throw-away Debian 12 lab hosts with systemd-nspawn.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_up(sub, common)
    _add_down(sub, common)
    _add_host_commands(sub, common)
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
            if port_open(rec["ip"], 22, 1.0, banner=b"SSH"):
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
