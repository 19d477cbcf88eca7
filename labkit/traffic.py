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
    name (a refused or reset connection is an answer the test must see). `interval` paces the
    requests (0: as fast as they come back).
    """

    def __init__(self, url: str, *, interval: float = 0.0, timeout: float = 5.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.answers: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = session.get(self.url, allow_redirects=False, timeout=self.timeout)
                    self.answers.append(answer.status_code)
                except requests.RequestException as error:
                    self.answers.append(type(error).__name__)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def counts(self) -> Counter[int | str]:
        """How many of each answer: what an assertion prints when one is not the expected one."""
        return Counter(self.answers)
