"""Where the lab keeps its state: paths, the host records, the network record, the lock."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.defaults import DEFAULT_SUBNET, LabError
from lab.specs import parse_subnet, validate_name


class LabState:
    """The lab's settings and files; the other parts of `Lab` build on it."""

    def __init__(
        self,
        *,
        state_dir: Path,
        machines_dir: Path,
        bridge: str,
        subnet: ipaddress.IPv4Network | None,
        mirror: str,
        security_mirror: str,
        nameservers: list[str] | None,
    ) -> None:
        self.state_dir = state_dir
        self.machines_dir = machines_dir
        self.bridge = bridge
        self._subnet = subnet
        self.mirror = mirror
        self.security_mirror = security_mirror
        self._nameservers = nameservers

    @property
    def base_dir(self) -> Path:
        return self.state_dir / "base"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def network_state_path(self) -> Path:
        return self.state_dir / "network.json"

    def machine_dir(self, name: str) -> Path:
        return self.machines_dir / name

    def overlay_dir(self, name: str) -> Path:
        return self.state_dir / "overlay" / name

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def record_path(self, name: str) -> Path:
        return self.hosts_dir / f"{name}.json"

    def load_record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(name).read_text())
        except FileNotFoundError:
            return None

    def records(self) -> list[dict[str, Any]]:
        if not self.hosts_dir.is_dir():
            return []
        recs = []
        for path in sorted(self.hosts_dir.glob("*.json")):
            # `list` does not take the lock: a host may be going away meanwhile.
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                recs.append(json.loads(path.read_text()))
        return sorted(recs, key=lambda r: ipaddress.IPv4Address(r["ip"]))

    def network_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.network_state_path.read_text())
        except FileNotFoundError:
            return None

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """Flag/env first, then what the running bridge was made with, then the default."""
        if self._subnet is not None:
            return self._subnet
        state = self.network_state()
        if state:
            return parse_subnet(state["subnet"])
        return parse_subnet(DEFAULT_SUBNET)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # Two `up`s at once (two Molecule scenarios, make and a developer) must
        # not build the base twice or race on the bridge.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def require(self, name: str) -> dict[str, Any]:
        rec = self.load_record(validate_name(name))
        if rec is None:
            raise LabError(f"no lab host {name!r} (see `list`)")
        return rec
