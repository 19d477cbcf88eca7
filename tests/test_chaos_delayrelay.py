"""chaos/delayrelay.py, the stand-in for `tc netem delay` of the cluster's 16-db-slow-300ms:
run as the process the chaos suite starts on an app host, between a real client and a real
TCP echo server, on loopback."""

from __future__ import annotations

import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.probes import port_open

RELAY = Path(__file__).resolve().parents[1] / "chaos" / "delayrelay.py"
DELAY_MS = 300


class Echo(socketserver.BaseRequestHandler):
    """Echoes; notes in its server's `ends` how each connection ended ("eof" or "reset")."""

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
            self.server.ends.append("eof")  # type: ignore[attr-defined]
        except ConnectionResetError:
            self.server.ends.append("reset")  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def relay() -> Iterator[tuple[int, subprocess.Popen, list[str]]]:
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    echo.daemon_threads = True
    echo.ends = []  # type: ignore[attr-defined]
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    port = free_port()
    argv = [sys.executable, str(RELAY), str(port), "127.0.0.1", str(echo.server_address[1]), str(DELAY_MS)]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port, proc, echo.ends  # type: ignore[attr-defined]
    proc.terminate()
    proc.wait(10)
    echo.shutdown()
    echo.server_close()


def round_trip(sock: socket.socket, data: bytes) -> float:
    started = time.monotonic()
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        got += sock.recv(65536)
    assert got == data
    return time.monotonic() - started


def test_each_round_trip_waits_the_delay_once_and_the_heal_ends_it(relay):
    port, proc, _ = relay
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # the opening is delayed too: the first answer comes after two delays (SYN, data)
        first = round_trip(sock, b"hello")
        assert first >= 2 * DELAY_MS / 1000
        # a chunk waits its own delay, not the sum of those before it: sent together, the
        # ten come back after about one delay
        assert DELAY_MS / 1000 <= round_trip(sock, b"".join(b"%d," % n for n in range(10))) < 3 * DELAY_MS / 1000
        proc.send_signal(signal.SIGUSR1)
        time.sleep(DELAY_MS / 1000)
        assert round_trip(sock, b"healed") < DELAY_MS / 1000
    assert time.monotonic() - started < 5


def test_order_and_bytes_are_kept_and_eof_passes_through(relay):
    port, _, _ = relay
    payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            got += sock.recv(65536)
        sender.join()
        assert bytes(got) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the echo server saw the end and closed its side


def test_the_stop_resets_every_relayed_connection_on_both_sides(relay):
    """A client must learn at once that the relay is gone (an RST: a FIN can be lost with the
    redirect that carried it, and libpq would wait on a half-closed link), and so must the
    upstream, whose session would otherwise linger."""
    port, proc, ends = relay
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        round_trip(sock, b"up")
        proc.terminate()
        assert proc.wait(10) == 0
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    deadline = time.monotonic() + 5
    while "reset" not in ends and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ends.count("reset") == 1  # ours (the fixture's readiness probe ended with an "eof")


def test_an_unreachable_upstream_closes_the_client(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(RELAY), str(port), "127.0.0.1", str(free_port()), "10"])
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(1) == b""
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
