"""Steady traffic for a deploy: fixed-rate requests to a lab host, every failure counted.

    python -m loadtests.steady --target http://10.213.0.121 --rate 40 --out run.json
    ... deploy meanwhile ..., then Ctrl-C (SIGINT) or SIGTERM: the summary is written

Each of --connections threads keeps one keep-alive connection and sends at rate/connections
per second, at fixed times whatever the answers do (an open loop: a slow answer delays only
its own thread's next sends, which then go out at once). The mix: 80 % redirects of a few
links made at start (302 expected), 10 % creates with the admin key (201), 10 % reads of
GET /urls/<id> with the key (200). Anything else, or no answer (connection refused, reset,
timeout), is a failure. The summary (JSON, also to stdout): requests, failures, statuses
per kind, and the failures per second with their time (epoch), to match against the deploy's
steps. Like urllib3 and browsers, a keep-alive connection the server has closed while idle
(an Nginx reload does that) is replaced before it is used, not counted as a failure; a
request already sent when the connection breaks is a failure, whatever its method (no
retries). For the deploy demonstrations of docs/deployment.md (make canary-demo).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import select
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from loadtests import apikey

EXPECTED = {"redirect": 302, "create": 201, "read": 200}


class Totals:
    """Counts shared by the sender threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.failures_by_second: Counter[int] = Counter()
        self.requests = 0
        self.failures = 0

    def add(self, kind: str, status: str, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[f"{kind} {status}"] += 1
            if not ok:
                self.failures += 1
                self.failures_by_second[int(time.time())] += 1


def connect(target: str) -> http.client.HTTPConnection:
    url = urlparse(target)
    return http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)


def dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether the server closed this idle keep-alive connection (readable while idle: EOF).

    The check urllib3 (requests) and browsers make before they reuse a pooled connection; an
    Nginx reload closes its idle client connections, and without it every one of them would
    fail its next request.
    """
    return conn.sock is not None and bool(select.select([conn.sock], [], [], 0)[0])


def request(conn: http.client.HTTPConnection, method: str, path: str, headers: dict, body: str | None) -> int:
    if dropped(conn):
        conn.close()
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    answer.read()
    return answer.status


def make_links(target: str, key: str, count: int) -> list[tuple[str, int]]:
    """Links for the redirects and reads: (code, id)."""
    conn = connect(target)
    links = []
    for n in range(count):
        body = json.dumps({"original_url": f"https://example.org/steady/{time.time_ns()}/{n}"})
        headers = {**apikey.headers(key), "Content-Type": "application/json"}
        conn.request("POST", "/urls", body=body, headers=headers)
        answer = conn.getresponse()
        made = json.loads(answer.read())
        if answer.status != 201:
            raise SystemExit(f"could not make a link: {answer.status} {made}")
        links.append((made["short_code"], made["id"]))
    conn.close()
    return links


def sender(
    target: str, key: str, links: list[tuple[str, int]], period: float, stop: threading.Event, totals: Totals
) -> None:
    conn = connect(target)
    auth = apikey.headers(key)
    next_at = time.monotonic() + random.random() * period
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_at += period
        code, link_id = random.choice(links)
        roll = random.random()
        if roll < 0.8:
            kind, method, path, headers, body = "redirect", "GET", f"/{code}", {}, None
        elif roll < 0.9:
            body = json.dumps({"original_url": f"https://example.org/steady/{time.time_ns()}"})
            kind, method, path, headers = "create", "POST", "/urls", {**auth, "Content-Type": "application/json"}
        else:
            kind, method, path, headers, body = "read", "GET", f"/urls/{link_id}", auth, None
        try:
            status = request(conn, method, path, headers, body)
            totals.add(kind, str(status), status == EXPECTED[kind])
        except (OSError, http.client.HTTPException) as error:
            totals.add(kind, type(error).__name__, False)
            conn.close()
            conn = connect(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="base URL of the service (a lab host's Nginx)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second in all")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at SIGINT/SIGTERM)")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    apikey.add_argument(parser)
    args = parser.parse_args()
    key = apikey.resolve(args.api_key)
    links = make_links(args.target, key, args.links)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    totals = Totals()
    period = args.connections / args.rate
    threads = [
        threading.Thread(target=sender, args=(args.target, key, links, period, stop, totals), daemon=True)
        for _ in range(args.connections)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    stop.wait(args.seconds or None)
    stop.set()
    for thread in threads:
        thread.join(15)
    summary = {
        "target": args.target,
        "rate": args.rate,
        "started": started,
        "seconds": round(time.time() - started, 1),
        "requests": totals.requests,
        "failures": totals.failures,
        "statuses": dict(sorted(totals.statuses.items())),
        "failures_by_second": {str(second): n for second, n in sorted(totals.failures_by_second.items())},
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
