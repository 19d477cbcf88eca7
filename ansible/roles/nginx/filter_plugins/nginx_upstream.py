"""The upstream members as the nginx role renders them (vars/main.yml, __nginx_upstream_members)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULTS = {"weight": 1, "state": "up"}


def upstream_members(servers: Iterable[Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """Each server with weight 1 and state up unless set, then its override (by name) applied."""
    return [{**DEFAULTS, **server, **overrides.get(server["name"], {})} for server in servers]


class FilterModule:
    """nginx_upstream_members: nginx_upstream_servers and nginx_upstream_overrides -> members."""

    def filters(self) -> dict[str, Any]:
        return {"nginx_upstream_members": upstream_members}
