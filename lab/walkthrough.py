"""Replay docs/walkthrough-induced-fault.md on a lab host and print what the on-call sees.

    .venv/bin/python -m lab.walkthrough                  # make up's host (labkit.hosts)
    .venv/bin/python -m lab.walkthrough --host 10.213.0.30 --name mol-aio

It sends light traffic through Nginx, stops PostgreSQL, waits for the page in the lab's
Discord sink, then evaluates the queries of the dashboard panels the walk-through reads
(the JSON files Grafana is provisioned with, run against the host's Prometheus: Grafana
itself cannot be installed here) and reads the logs through the password-protected console,
as a browser would. Then it starts PostgreSQL again and waits for the resolved messages.
Prometheus and the sink listen on the host's loopback only, so those two are read over the
lab's SSH; everything the operator would click is read over HTTP.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import requests

from labkit.hosts import AIO_ADDRESS
from loadtests import apikey, labssh

ROOT = Path(__file__).resolve().parents[1]

DASHBOARDS = ROOT / "ansible/roles/grafana/files/dashboards"
PASSWORD_FILE = ROOT / "ansible/.secrets/journal_gateway_password"
# (dashboard file, panel title): the panels of steps 2-4 of the walk-through.
PANELS = [
    ("shortener-overview.json", "Probe through Nginx (1 = up)"),
    ("shortener-overview.json", "Instances up"),
    ("shortener-overview.json", "Requests per second by status"),
    ("shortener-dependencies.json", "Up (1) / down (0)"),
    ("shortener-dependencies.json", "Client connections: active, waiting"),
    ("shortener-dependencies.json", "Click backlog, pending, seconds since the worker's last write"),
    ("shortener-instances.json", "Dependencies seen by the instance (1 = ok)"),
]


def panel(file: str, title: str) -> dict:
    for candidate in json.loads((DASHBOARDS / file).read_text())["panels"]:
        if candidate["title"] == title:
            return candidate
    raise SystemExit(f"no panel {title!r} in {file}")


def prometheus(host: str, expr: str) -> list[dict]:
    expr = expr.replace("$__rate_interval", "2m").replace("$instance", ".*")
    url = "http://127.0.0.1:9090/api/v1/query?query=" + quote(expr, safe="")
    answer = json.loads(labssh.ssh(host, f"curl -sf {shlex.quote(url)}"))
    return answer["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template or "{{instance}}")


def show_panels(host: str) -> None:
    for file, title in PANELS:
        print(f"  [{file.removesuffix('.json')}] {title}")
        for target in panel(file, title)["targets"]:
            for series in prometheus(host, target["expr"]):
                value = float(series["value"][1])
                print(f"      {legend(target.get('legendFormat', ''), series['metric']):44} {value:.4g}")


def messages(host: str, since: float) -> list[dict]:
    return json.loads(labssh.ssh(host, f"curl -sf 'http://127.0.0.1:9095/messages?since={since}'"))


def titles(found: list[dict]) -> list[str]:
    return [" ".join(embed.get("title", "") for embed in m["embeds"]) for m in found]


def wait_message(host: str, since: float, pattern: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message, title in zip(found := messages(host, since), titles(found), strict=True):
            if re.search(pattern, title):
                return message
        time.sleep(1)
    raise SystemExit(f"no message matching {pattern!r} within {timeout} s; got {titles(messages(host, since))}")


def logs(base: str, name: str, match: dict[str, str], minutes: int, password: str, grep: str = "") -> list[str]:
    since = int((time.time() - minutes * 60) * 1_000_000)
    response = requests.get(
        f"{base}:8080/logs/{name}/entries",
        params=match,
        headers={"Range": f"entries=t={since:x}", "Accept": "application/json"},
        auth=("operator", password),
        timeout=30,
    )
    response.raise_for_status()
    lines = [json.loads(line).get("MESSAGE", "") for line in response.text.splitlines() if line.strip()]
    return [line if isinstance(line, str) else str(line) for line in lines if grep in str(line)]


class Traffic(threading.Thread):
    """A user or two: follow a cached link, list users, create a link, about 10 requests/s."""

    def __init__(self, base: str, key: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.statuses: Counter[str] = Counter()
        # The admin key: the host runs the keys profile (GET /users needs a key, and anonymous
        # creation is limited per client address).
        self.api = requests.Session()
        self.api.headers.update(apikey.headers(key))
        created = self.api.post(f"{base}/urls", json={"original_url": "https://example.com/walkthrough"}, timeout=5)
        self.code = created.json()["short_code"]

    def run(self) -> None:
        calls = [
            ("GET /<code>", lambda: requests.get(f"{self.base}/{self.code}", allow_redirects=False, timeout=5)),
            ("GET /users", lambda: self.api.get(f"{self.base}/users", params={"per_page": 5}, timeout=5)),
            (
                "POST /urls",
                lambda: self.api.post(f"{self.base}/urls", json={"original_url": "https://example.com/w"}, timeout=5),
            ),
        ]
        while not self.stop.is_set():
            for name, call in calls:
                try:
                    self.statuses[f"{name} {call().status_code}"] += 1
                except requests.RequestException:
                    self.statuses[f"{name} error"] += 1
            time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=AIO_ADDRESS, help="the lab host's address (lb, db and monitoring)")
    parser.add_argument("--name", default="lab-aio", help="its inventory name (the console's path)")
    apikey.add_argument(parser)
    args = parser.parse_args()
    base = f"http://{args.host}"
    password = PASSWORD_FILE.read_text().strip()

    traffic = Traffic(base, apikey.resolve(args.api_key))
    traffic.start()
    time.sleep(40)  # so that the rate panels have traffic before the fault
    print("0. before the fault")
    show_panels(args.host)

    stopped = time.time()
    labssh.ssh(args.host, "systemctl stop postgresql@15-main.service")
    print(f"\n   {time.strftime('%H:%M:%S')} systemctl stop postgresql@15-main")
    try:
        page = wait_message(args.host, stopped, r"^\[FIRING:\d+\] PostgresqlDown", 300)
        print(f"\n1. the page, {page['received_at'] - stopped:.1f} s after the stop: {titles([page])[0]}")
        time.sleep(20)
        print("   every message since the stop:")
        for title in titles(messages(args.host, stopped)):
            print(f"      {title}")
        print("\n2-4. the dashboards' panels")
        show_panels(args.host)
        print("\n5. logs through the console (http://HOST:8080/logs/), last 10 minutes")
        # systemd's own lines about a unit carry UNIT=; what the unit's processes write, _SYSTEMD_UNIT=
        # (PostgreSQL writes its own log to a file, so only systemd speaks of it in the journal).
        for match, grep in (
            ({"UNIT": "postgresql@15-main.service"}, ""),
            ({"_SYSTEMD_UNIT": "shortener@8001.service"}, "ERROR"),
            ({"_SYSTEMD_UNIT": "shortener-clickworker.service"}, "WARNING"),
        ):
            lines = logs(base, args.name, match, 10, password, grep)
            shown = " ".join(f"{k}={v}" for k, v in match.items())
            print(f"   {shown}{' filter ' + grep if grep else ''}: {len(lines)} lines, the last 3:")
            for line in lines[-3:]:
                print(f"      {line[:200]}")
    finally:
        started = time.time()
        labssh.ssh(args.host, "systemctl start postgresql@15-main.service")
        print(f"\n6. {time.strftime('%H:%M:%S')} systemctl start postgresql@15-main")
    resolved = wait_message(args.host, started, r"^\[RESOLVED\] PostgresqlDown", 300)
    print(f"   {titles([resolved])[0]}, {resolved['received_at'] - started:.1f} s after the start")
    traffic.stop.set()
    traffic.join()
    print("\nthe traffic's answers, whole run:", dict(sorted(traffic.statuses.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
