"""SSH to a lab host as root with the lab's key: the options once, for the lab tool and the tests."""

from __future__ import annotations

import subprocess

from labkit.hosts import SSH_KEY

# Lab hosts get new host keys with every `lab.py up`: neither checked nor remembered.
OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
)


def ssh_argv(address: str, *command: str, key: str = SSH_KEY, connect_timeout: int = 10) -> list[str]:
    """The ssh command line that runs `command` on the host as root."""
    return ["ssh", "-i", key, *OPTIONS, "-o", f"ConnectTimeout={connect_timeout}", f"root@{address}", *command]


def ssh(
    address: str, command: str, *, stdin: bytes | str | None = None, check: bool = True, timeout: float = 300
) -> str:
    """Runs a shell command on the host as root; returns its stdout."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(ssh_argv(address, command), input=data, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"ssh {address} {command[:80]!r} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc.stdout.decode(errors="replace")
