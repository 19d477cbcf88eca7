"""Lists of the deployment computed once, for every role that needs them (group_vars/all.yml).

Loaded by Ansible because it sits next to the playbooks (filter_plugins/); Molecule's
converge imports those playbooks, which loads it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Bind addresses that mean "every address": the instance is reached at the host's own.
WILDCARD_BINDS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared with, never bound


def app_instances(app_hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every instance of every app host: name ("HOST:PORT"), host, port and address.

    `name` is the `instance` label of the instance's metrics and the name of its Nginx upstream
    member; `address` is where the load balancers and Prometheus reach it: its bind address,
    or the host's site_address when it binds a wildcard.
    """
    instances = []
    for host in app_hosts:
        host_vars = hostvars[host]
        bind = str(host_vars.get("shortener_bind_address", "127.0.0.1"))
        address = host_vars.get("site_address", host) if bind in WILDCARD_BINDS else bind
        for port in host_vars.get("shortener_instances", []):
            instances.append({"name": f"{host}:{port}", "host": host, "port": int(port), "address": address})
    return instances


class FilterModule:
    """site_app_instances: app hosts and hostvars -> their instances."""

    def filters(self) -> dict[str, Any]:
        return {"site_app_instances": app_instances}
