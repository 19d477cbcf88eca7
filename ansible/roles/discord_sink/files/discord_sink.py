#!/usr/bin/python3
"""A Discord-compatible webhook sink for the lab: Alertmanager's discord_configs post here.

It answers POST /api/webhooks/<id>/<token> like Discord does (204 No Content, or 200 with
the message when ?wait=true), appends each message with its arrival time to a JSON-lines
file, and lists them at GET /messages (JSON; ?since=<unix time> keeps the later ones).
DELETE /messages empties the file. Standard library only.

    discord_sink.py --listen 127.0.0.1:9095 --store /var/lib/discord-sink/messages.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

WEBHOOK_PATH = re.compile(r"^/api/webhooks/(?P<id>[^/]+)/(?P<token>[^/]+)/?$")
# Discord refuses bodies over 8 MB; a lab sink needs far less.
MAX_BODY = 1 << 20


class Store:
    """Messages in a JSON-lines file: one append per message survives a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            text = self.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def clear(self) -> None:
        with self.lock:
            self.path.write_text("", encoding="utf-8")


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "discord-sink/1"

        def answer(self, status: HTTPStatus, body: object = None) -> None:
            data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            match = WEBHOOK_PATH.match(url.path)
            if not match:
                self.answer(HTTPStatus.NOT_FOUND, {"message": "Unknown Webhook", "code": 10015})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"message": "Request entity too large", "code": 40005})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                self.answer(HTTPStatus.BAD_REQUEST, {"message": "Cannot send an empty message", "code": 50006})
                return
            # Discord needs content, embeds (or files); a message with neither is a 400.
            if not isinstance(payload, dict) or not (payload.get("content") or payload.get("embeds")):
                self.answer(HTTPStatus.BAD_REQUEST, {"message": "Cannot send an empty message", "code": 50006})
                return
            record = {
                "received_at": time.time(),
                "webhook_id": match["id"],
                "content": payload.get("content"),
                "embeds": payload.get("embeds") or [],
                "username": payload.get("username"),
            }
            store.add(record)
            if parse_qs(url.query).get("wait", ["false"])[0].lower() == "true":
                self.answer(HTTPStatus.OK, {"id": str(int(record["received_at"] * 1000)), **record})
            else:
                self.answer(HTTPStatus.NO_CONTENT)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/health":
                self.answer(HTTPStatus.OK, {"status": "ok"})
                return
            if url.path != "/messages":
                self.answer(HTTPStatus.NOT_FOUND, {"message": "404: Not Found", "code": 0})
                return
            messages = store.all()
            since = parse_qs(url.query).get("since")
            if since:
                messages = [m for m in messages if m["received_at"] > float(since[0])]
            self.answer(HTTPStatus.OK, messages)

        def do_DELETE(self) -> None:
            if urlsplit(self.path).path != "/messages":
                self.answer(HTTPStatus.NOT_FOUND, {"message": "404: Not Found", "code": 0})
                return
            store.clear()
            self.answer(HTTPStatus.NO_CONTENT)

        def log_message(self, format: str, *args: object) -> None:
            # The journal gets one line per request: what arrived, not the body.
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:9095", help="ADDRESS:PORT to listen on")
    parser.add_argument("--store", default="messages.jsonl", type=Path, help="JSON-lines file of the messages")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(parse_listen(args.listen), make_handler(Store(args.store)))
    server.serve_forever()


if __name__ == "__main__":
    main()
