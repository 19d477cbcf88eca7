"""Is a TCP port open: what the lab tool waits for and the tests assert on."""

from __future__ import annotations

import socket


def port_open(address: str, port: int, timeout: float = 2.0, *, banner: bytes = b"") -> bool:
    """True when a TCP connection is accepted (and, given a banner, the server sends it first).

    A banner tells "the daemon is up" from "something accepts": sshd's `SSH-` arrives only once
    sshd runs, while systemd's socket activation accepts earlier.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            if not banner:
                return True
            sock.settimeout(timeout)
            return sock.recv(len(banner)).startswith(banner)
    except OSError:
        return False
