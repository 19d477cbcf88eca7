"""Locust users for the shortener: traffic shaped like real use of a link shortener.

Most requests follow short links, and a few links get most of the clicks (Zipf-like
popularity over the seed's active codes, plus the links the users create themselves); some
users create links, some read the API, a few ask for codes that do not exist.

The seed (``../shared/seed/`` loaded into the target first, see loadtests/run.py) gives the
active codes: ``SHORTENER_SEED_DIR`` (default ``../shared/seed`` next to the repository).

Counting: a redirect is a success only as a 302 (or the link's 301/307/308) and is never
followed (the target is somebody else's site); an unknown code is a success only as a 404.

Two user classes:

- ``ShortenerUser``: the mixed traffic of the ladder (think time ``LOCUST_WAIT_MIN`` to
  ``LOCUST_WAIT_MAX`` seconds, default 1 to 3).
- ``PacedRedirectUser``: open-loop-ish redirects only, each user sending one request every
  ``LOCUST_PACING`` seconds (constant pacing): N users give N / pacing requests/s whatever
  the latency, for the fixed-offered-load latency figure.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import os
import random
import string
from pathlib import Path

# Locust loads this file by its path and puts its folder on the import path itself.
import apikey
from locust import FastHttpUser, between, constant_pacing, task

REDIRECT_STATUSES = {301, 302, 307, 308}
_HERE = Path(__file__).resolve().parent

# API calls carry the admin key (run.py passes --api-key as SHORTENER_API_KEY): the target
# runs the keys profile. Redirects carry none, like a visitor's.
API_HEADERS = apikey.headers(apikey.resolve())
SEED_DIR = Path(os.environ.get("SHORTENER_SEED_DIR", _HERE.parent.parent / "shared" / "seed"))
ZIPF_S = float(os.environ.get("LOCUST_ZIPF_S", "1.1"))
WAIT_MIN = float(os.environ.get("LOCUST_WAIT_MIN", "1"))
WAIT_MAX = float(os.environ.get("LOCUST_WAIT_MAX", "3"))
PACING = float(os.environ.get("LOCUST_PACING", "0.5"))


def _load_seed() -> tuple[list[str], list[int], list[int]]:
    """Active codes (in file order), url ids and user ids from the seed CSVs."""
    codes: list[str] = []
    url_ids: list[int] = []
    with (SEED_DIR / "urls.csv").open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            url_ids.append(int(row["id"]))
            if row["is_active"].strip().lower() in {"true", "1", "t", "yes"}:
                codes.append(row["short_code"])
    user_ids: list[int] = []
    users_csv = SEED_DIR / "users.csv"
    if users_csv.exists():
        with users_csv.open(newline="", encoding="utf-8-sig") as handle:
            user_ids = [int(row["id"]) for row in csv.DictReader(handle)]
    if not codes:
        raise SystemExit(f"no active codes in {SEED_DIR / 'urls.csv'}")
    return codes, url_ids, user_ids


CODES, URL_IDS, USER_IDS = _load_seed()
# The popularity ranking is a fixed shuffle, so that "hot" does not mean "oldest".
random.Random(42).shuffle(CODES)
# Zipf weights 1/rank^s as a cumulative table: one bisect per pick.
_CUM = list(itertools.accumulate(1.0 / (rank**ZIPF_S) for rank in range(1, len(CODES) + 1)))
_TOTAL = _CUM[-1]


def hot_code(rng: random.Random) -> str:
    return CODES[bisect.bisect_left(_CUM, rng.random() * _TOTAL)]


def unknown_code(rng: random.Random) -> str:
    # 10 characters: generated codes have 6 and the seed's too, so this one cannot exist.
    return "zz" + "".join(rng.choices(string.ascii_letters + string.digits, k=8))


def _follow(user: FastHttpUser, code: str, name: str) -> None:
    with user.client.get(
        f"/{code}", name=name, allow_redirects=False, catch_response=True, headers=user.headers
    ) as response:
        if response.status_code in REDIRECT_STATUSES:
            response.success()
        else:
            response.failure(f"redirect: expected 302, got {response.status_code}")


class ShortenerUser(FastHttpUser):
    """One person: mostly clicks links; sometimes shortens one or looks at the API."""

    wait_time = between(WAIT_MIN, WAIT_MAX)
    # A small pool per user: FastHttpUser keeps connections alive, like a browser.
    concurrency = 1
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"User-Agent": "shortener-loadtest", "Referer": "https://loadtest.invalid/"}
        self.own_codes: list[str] = []

    @task(80)
    def follow_link(self) -> None:
        # One click in ten goes to a link this user made (just shared, so it is clicked).
        if self.own_codes and self.rng.random() < 0.1:
            _follow(self, self.rng.choice(self.own_codes), "/[code]")
        else:
            _follow(self, hot_code(self.rng), "/[code]")

    @task(4)
    def unknown_link(self) -> None:
        with self.client.get(
            f"/{unknown_code(self.rng)}",
            name="/[unknown code]",
            allow_redirects=False,
            catch_response=True,
            headers=self.headers,
        ) as response:
            if response.status_code == 404:
                response.success()
            else:
                response.failure(f"unknown code: expected 404, got {response.status_code}")

    @task(5)
    def create_link(self) -> None:
        body: dict[str, object] = {
            "original_url": f"https://example.com/loadtest/{self.rng.getrandbits(48):x}",
            "title": "load test",
        }
        if USER_IDS and self.rng.random() < 0.5:
            body["user_id"] = self.rng.choice(USER_IDS)
        with self.client.post(
            "/urls", json=body, name="/urls [create]", catch_response=True, headers=API_HEADERS
        ) as response:
            if response.status_code == 201:
                code = response.json().get("short_code")
                if code:
                    self.own_codes = [*self.own_codes, code][-20:]
                response.success()
            elif response.status_code == 404 and "user_id" in body:
                # A seed user deleted by an earlier test run: not a service failure.
                response.success()
            else:
                response.failure(f"create: expected 201, got {response.status_code}")

    @task(5)
    def read_url(self) -> None:
        url_id = self.rng.choice(URL_IDS)
        with self.client.get(
            f"/urls/{url_id}", name="/urls/[id]", catch_response=True, headers=API_HEADERS
        ) as response:
            # Seed links deleted by an earlier run answer 404, which is the contract.
            if response.status_code in (200, 404):
                response.success()
            else:
                response.failure(f"url: expected 200, got {response.status_code}")

    @task(3)
    def list_users(self) -> None:
        page = self.rng.randint(1, 20)
        self.client.get(f"/users?page={page}&per_page=20", name="/users?page=[n]", headers=API_HEADERS)

    @task(3)
    def list_events(self) -> None:
        url_id = self.rng.choice(URL_IDS)
        self.client.get(f"/events?url_id={url_id}&per_page=20", name="/events?url_id=[id]", headers=API_HEADERS)


class PacedRedirectUser(FastHttpUser):
    """Redirects only, at a constant pace per user: a fixed offered load."""

    wait_time = constant_pacing(PACING)
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"User-Agent": "shortener-loadtest-paced"}

    @task
    def follow_link(self) -> None:
        _follow(self, hot_code(self.rng), "/[code]")
