"""HTTP by hand, for the checks that send what a client library would never send: a hostile
request line, raw bytes, a stalled head. Used by the Molecule verify modules."""

from __future__ import annotations

import json
import socket
import time


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/"), f"not an HTTP answer: {raw[:200]!r}"
        self.status = int(parts[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> dict:
        assert self.headers.get("content-type", "").startswith("application/json"), self.raw[:400]
        return json.loads(self.body)


def send_raw(address: str, data: bytes, port: int = 80, wait: float = 15) -> bytes:
    """Sends bytes as they are and reads until Nginx closes the connection (or `wait` passes)."""
    with socket.create_connection((address, port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            raw = b"".join(chunks)
            head, sep, body = raw.partition(b"\r\n\r\n")
            length = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            if sep and length and len(body) >= int(length[0].split(b":")[1]):
                break
        return b"".join(chunks)


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode("latin-1") + body
