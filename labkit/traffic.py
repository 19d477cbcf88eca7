"""Requests in a background thread while a test makes a fault, counting every answer."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType

import requests


class Traffic:
    """GETs `url` (redirects not followed) until the `with` block ends.

    Each answer is recorded as its status code, each failed request as the exception's class
    name (a refused or reset connection is an answer the test must see). `pause` is the wait
    after each answer (0: as fast as they come back). Each request opens a connection of its own
    unless `keep_alive`: a kept connection that the server closes between two requests (its
    keep-alive limit) fails the next one, which is the client's race, not the fault's.
    """

    def __init__(self, url: str, *, pause: float = 0.0, keep_alive: bool = False, timeout: float = 5.0) -> None:
        self.url = url
        self.pause = pause
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.answers: list[int | str] = []
        # time.monotonic() of each answer, in step with `answers`
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            client = session if self.keep_alive else requests
            while not self._stop.is_set():
                try:
                    answer = client.get(self.url, allow_redirects=False, timeout=self.timeout)
                    self.answers.append(answer.status_code)
                except requests.RequestException as error:
                    self.answers.append(type(error).__name__)
                self.times.append(time.monotonic())
                self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def failed_since(self, start: float, ok: int = 302) -> int:
        """Answers other than `ok` (failed requests included) that came at or after `start`
        (a time.monotonic() value): what a fault made at `start` cost the clients."""
        return sum(1 for at, answer in zip(self.times, self.answers, strict=False) if at >= start and answer != ok)

    def counts(self) -> Counter[int | str]:
        """How many of each answer: what an assertion prints when one is not the expected one."""
        return Counter(self.answers)
