"""What every server of the dev stack offers, so that the stack can start, stop and report them alike.

Adding a daemon: write a module with a subclass of `Daemon` (see redis.py, the smallest), then
list it in `DevStack.__init__` (devstack/stack.py) in the order it must start; status, `up`,
`down` and the test fixtures pick it up from there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack.stack import DevStack


class Daemon(ABC):
    """One server of the stack, started daemonised so that it outlives the process that started it."""

    name: str  # key in DevStack.status() and DevStack.started
    label: str  # how messages call it

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def log_file(self) -> Path: ...

    def prepare(self) -> None:  # noqa: B027 (a hook: most daemons need nothing here)
        """Make the directories the server needs (called once per stack, under its lock)."""

    @abstractmethod
    def pid(self) -> int | None:
        """The running server's pid, or None."""

    @abstractmethod
    def start(self) -> None:
        """Start unless running (a running server is reused), then wait until it answers."""

    @abstractmethod
    def stop(self) -> None:
        """Stop if running; stopping a stopped server is not an error."""

    @abstractmethod
    def answers(self) -> bool:
        """True when the server answers now; raising means it does not."""

    def status(self, has_secrets: bool) -> dict[str, Any]:
        """pid (or None), port and whether it answers now."""
        try:
            answers = has_secrets and bool(self.answers())
        except Exception:  # down is an answer, not an error
            answers = False
        return {"pid": self.pid(), "port": self.port, "answers": answers}
