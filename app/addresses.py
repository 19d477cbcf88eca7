"""Client addresses: which proxy to believe, and address-list membership.

The one place that decides a request's client address, used by the access check (/metrics),
the rate limits and the access log line alike.
"""

from __future__ import annotations

import functools
import ipaddress


class Networks:
    """A comma-separated list of CIDRs (or single addresses). Membership of an address string
    is computed once per distinct string: the same few peers ask again and again."""

    def __init__(self, spec: str) -> None:
        self.networks = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            try:
                self.networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValueError(f"not an address or CIDR: {part!r}") from exc
        self.contains = functools.lru_cache(maxsize=1024)(self._contains)

    def _contains(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


def client_address(remote_addr: str | None, real_ip: str | None, trusted: Networks) -> str | None:
    """``X-Real-IP`` when the peer is a trusted proxy (our Nginx sets it), else the peer.

    Anyone else could send the header to pose as another client (or as a monitoring host).
    """
    if real_ip and trusted.contains(remote_addr):
        return real_ip.strip()
    return remote_addr
