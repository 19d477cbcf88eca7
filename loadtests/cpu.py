"""The CPU a load generator itself used: the machine's two cores are shared with the lab host
under test, so every benchmark prints what its client took (hey, wrk, Locust)."""

from __future__ import annotations

import resource


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ChildrenCpu:
    """CPU seconds (user + system) of the child processes waited for since it was made: only
    children that have exited and been waited for count, so read it after they are done."""

    def __init__(self) -> None:
        self._start = _children_seconds()

    def seconds(self) -> float:
        return _children_seconds() - self._start
