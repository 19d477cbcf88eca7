"""The steady open-loop traffic the experiments run under, and what they ask a lab host
(SQL over labkit's SSH, an inventory's addresses by group)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from labkit.ssh import ssh

ROOT = Path(__file__).resolve().parents[1]


def psql(address: str, query: str) -> str:
    """One query (on stdin: any length) as the postgres superuser over the local socket."""
    return ssh(address, "runuser -u postgres -- psql -d shortener -XtAq -v ON_ERROR_STOP=1", stdin=query).strip()


def inventory_hosts(inventory: Path) -> dict[str, list[str]]:
    """Address(es) by group of a YAML inventory like ansible/inventories/lab."""
    data = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]
    address = {name: (vars_ or {}).get("ansible_host", name) for name, vars_ in (data.get("hosts") or {}).items()}

    def walk(groups: dict) -> Iterator[tuple[str, list[str]]]:
        for group, body in (groups or {}).items():
            body = body or {}
            for name, vars_ in (body.get("hosts") or {}).items():
                address.setdefault(name, (vars_ or {}).get("ansible_host", name))
            yield group, list(body.get("hosts") or {})
            yield from walk(body.get("children") or {})

    members = dict(walk(data.get("children") or {}))
    return {group: [address[name] for name in names] for group, names in members.items()}


def host(configuration: dict, group: str = "db") -> str:
    """The first host of `group` in the experiment's inventory (configuration["inventory"])."""
    return inventory_hosts(Path(configuration["inventory"]))[group][0]


@dataclass
class Answer:
    at: float  # epoch seconds when the request was sent
    kind: str  # hot, cold, create, read
    status: int  # HTTP status; 0: no answer (refused, reset, timed out)
    latency: float
    code: str = ""  # the short code followed, or the one a 201 acknowledged


# What each kind must answer for the request to count as served.
EXPECTED = {"hot": 302, "cold": 302, "create": 201, "read": 200}


@dataclass
class Traffic:
    """Open loop: every kind fires at its fixed rate whether or not earlier requests answered."""

    base: str
    headers: dict[str, str]
    hot: list[str]
    read_ids: list[int]
    cold: list[str]
    rates: dict[str, float]
    tag: str
    timeout: float = 5.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=96)
        self._threads: list[threading.Thread] = []
        self._cold = iter(self.cold)
        self._lock = threading.Lock()
        self._serial = itertools.count()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _send(self, kind: str, fire: Callable[[requests.Session], tuple[int, str]]) -> None:
        sent = time.time()
        try:
            status, code = fire(self._session())
        except requests.RequestException:
            status, code = 0, ""
            self._local.session = requests.Session()
        with self._lock:
            self.answers.append(Answer(sent, kind, status, time.time() - sent, code))

    def _request(self, kind: str, n: int) -> Callable[[requests.Session], tuple[int, str]] | None:
        t = self.timeout
        if kind in ("hot", "cold"):
            if kind == "hot":
                code = self.hot[n % len(self.hot)]
            else:
                with self._lock:
                    code = next(self._cold, "")
                if not code:
                    return None  # the pool of never-visited links is used up: no more cold ones
            return lambda s: (s.get(f"{self.base}/{code}", allow_redirects=False, timeout=t).status_code, code)
        if kind == "read":
            url_id = self.read_ids[n % len(self.read_ids)]
            return lambda s: (s.get(f"{self.base}/urls/{url_id}", headers=self.headers, timeout=t).status_code, "")

        def create(s: requests.Session) -> tuple[int, str]:
            body = {"original_url": f"https://example.com/chaos/{self.tag}/{next(self._serial)}"}
            r = s.post(f"{self.base}/urls", json=body, headers=self.headers, timeout=t)
            return r.status_code, (r.json().get("short_code", "") if r.status_code == 201 else "")

        return create

    def _loop(self, kind: str, rate: float) -> None:
        next_at = time.monotonic()
        for n in itertools.count():
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            fire = self._request(kind, n)
            if fire is None:
                return
            self._pool.submit(self._send, kind, fire)
            next_at += 1 / rate

    def start(self) -> None:
        for kind, rate in self.rates.items():
            thread = threading.Thread(target=self._loop, args=(kind, rate), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True)
        return sorted(self.answers, key=lambda a: a.at)
