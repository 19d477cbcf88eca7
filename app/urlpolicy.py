"""Which link targets the service refuses, and why (docs/failure-modes.md, "URL policy").

A short link on a trusted domain lends that trust to its target, so a target must be a
public web site: not an address inside some network (a visitor's, a cloud's metadata service,
ours), not a name that only resolves locally, not the shortener itself (a loop), not a domain
the operator blocked, not a homograph of another name, and without user info that hides the
real host (``http://bank.example@evil.example/``).

The host is read the way a browser reads it (the WHATWG URL standard), because the browser is
what follows the link: percent-escapes and Unicode dots are decoded, full-width digits mapped
(UTS 46), and a host whose last label is a number is an IPv4 address in any of the spellings
browsers accept (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``).

What this cannot see: a public name whose DNS points at a private address (the service never
resolves targets; see docs/security.md, "Input").
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote_to_bytes, urlsplit

import idna
from confusable_homoglyphs import categories
from flask import current_app, has_app_context, has_request_context, request

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that resolve only on a local network or a host, never on the public internet:
# RFC 6761 (localhost, invalid, test), RFC 6762 (local: mDNS), RFC 8375 (home.arpa), ICANN's
# reserved private-use "internal", the reverse-DNS tree (arpa), and the suffixes routers and
# companies use in practice without owning them (lan, home, corp, intranet, private,
# localdomain). A name equal to a suffix, or under it, is refused.
LOCAL_SUFFIXES = (
    "localhost",
    "localdomain",
    "local",
    "internal",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
    "arpa",
    "invalid",
    "test",
)

LOCAL_NAME = "must not point to a local-only name such as localhost or *.internal"

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Script combinations a single label may use (UTS 39 "highly restrictive", as browsers apply
# it): one script, or Latin with the scripts a CJK name is written in. Digits and hyphens
# (COMMON) and combining marks (INHERITED) go with any script.
_NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED"})
_ALLOWED_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)


def _net(reason: str, *cidrs: str) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    return [(ipaddress.ip_network(c), reason) for c in cidrs]


# Our own list from the IANA special-purpose registries rather than ipaddress' is_global,
# whose meaning changed between Python releases (and still calls multicast "global").
_V4_REFUSED = [
    *_net("an unspecified address", "0.0.0.0/8"),
    *_net("a loopback address", "127.0.0.0/8"),
    *_net("a private address", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
    *_net("a shared (CGNAT) address", "100.64.0.0/10"),
    *_net("a link-local address", "169.254.0.0/16"),
    *_net("a multicast address", "224.0.0.0/4"),
    *_net(
        "a reserved address",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relays (deprecated)
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "240.0.0.0/4",  # reserved, and the broadcast address
    ),
]
_V6_REFUSED = [
    *_net("an unspecified address", "::/128"),
    *_net("a loopback address", "::1/128"),
    *_net("a private address", "fc00::/7", "64:ff9b:1::/48", "fec0::/10"),
    *_net("a link-local address", "fe80::/10"),
    *_net("a multicast address", "ff00::/8"),
    *_net(
        "a reserved address",
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6
    ),
]
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class Refused(ValueError):
    """The reason a URL is refused; pydantic reports it as the field's message."""


class InvalidHost(Refused):
    """Not a host at all (as opposed to a host the policy refuses)."""

    def __init__(self) -> None:
        super().__init__("must have a valid host name")


def ip_refusal(address: IPAddress) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            return ip_refusal(embedded)
        for network, reason in _V6_REFUSED:
            if address in network:
                return reason
        if address not in _V6_GLOBAL_UNICAST:
            return "a reserved address"
        return None
    for network, reason in _V4_REFUSED:
        if address in network:
            return reason
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 one stands for (mapped, compatible, NAT64, 6to4): a browser or a
    translating network reaches that one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 host as WHATWG parses it: 0x hex, leading-zero octal, decimal."""
    base = 10
    if part[:2] in ("0x", "0X"):
        part, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        part, base = part[1:], 8
    if part == "":
        return 0
    try:
        return int(part, base) if part.isascii() and part.isalnum() else None
    except ValueError:
        return None


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and _ipv4_number(last) is not None


def whatwg_ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    """The address of a host that ends in a number, or None when a browser refuses the host."""
    if len(labels) > 4 or "" in labels:
        return None
    numbers = [_ipv4_number(label) for label in labels]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for i, n in enumerate(values[:-1]):
        address += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(address)


def _scripts(label: str) -> set[str]:
    return {categories.alias(ch) for ch in label} - _NEUTRAL_SCRIPTS


def mixes_scripts(label: str) -> bool:
    scripts = _scripts(label)
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _ALLOWED_SCRIPT_SETS)


@dataclass(frozen=True)
class Host:
    """A URL's host as a browser sees it: an address, or a name in ASCII (punycode) labels."""

    address: IPAddress | None = None
    labels: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return ".".join(self.labels)


def parse_host(netloc: str, single_label: bool = False) -> Host:
    """The host part of ``netloc`` (no user info), or Refused when a browser could not use it.

    ``single_label`` admits a one-word name (a top-level domain in the blocklist)."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        literal, _, _ = host[1:].partition("]")
        if "%" in literal:
            raise InvalidHost()
        try:
            # A zone ("%25eth0") is refused: no browser takes one, and it only names local links.
            return Host(address=ipaddress.IPv6Address(literal))
        except ValueError as exc:
            raise InvalidHost() from exc
    host = host.rpartition(":")[0] if ":" in host else host
    try:
        decoded = unquote_to_bytes(host).decode("utf-8")
        mapped = idna.uts46_remap(decoded, std3_rules=False, transitional=False)
    except (UnicodeError, idna.IDNAError) as exc:
        raise InvalidHost() from exc
    labels = mapped.lower().split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # "example.com." is example.com
    if _ends_in_number(labels):
        address = whatwg_ipv4(labels)
        if address is None:
            raise InvalidHost()
        return Host(address=address)
    # A single word ("http://intranet") is not a link anyone else can follow.
    if len(labels) < 2 and not single_label:
        if labels[0] in LOCAL_SUFFIXES:
            raise Refused(LOCAL_NAME)
        raise InvalidHost()
    ascii_labels = []
    for label in labels:
        try:
            if label.startswith("xn--"):
                unicode_label = idna.ulabel(label)
                ascii_label = label
            else:
                unicode_label = label
                ascii_label = idna.alabel(label).decode("ascii") if not label.isascii() else label
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidHost() from exc
        if not _HOST_LABEL.match(ascii_label):
            raise InvalidHost()
        if mixes_scripts(unicode_label):
            raise Refused("must not have a host name that mixes scripts (a look-alike of another name)")
        ascii_labels.append(ascii_label)
    return Host(labels=tuple(ascii_labels))


def domain_key(name: str) -> str:
    """A domain name as the checks compare it: ASCII labels, lower case, no trailing dot."""
    host = parse_host(name.strip(), single_label=True)
    if host.address is not None:
        return str(host.address)
    return host.name


def _suffixes(labels: tuple[str, ...]) -> list[str]:
    """``a.b.c`` -> ``a.b.c``, ``b.c``, ``c``: a listed domain covers its subdomains."""
    return [".".join(labels[i:]) for i in range(len(labels))]


def read_blocklist(path: str) -> frozenset[str]:
    """One domain a line, ``#`` starts a comment. A line that is not a domain stops the start:
    a blocklist read wrong would block nothing without anyone noticing."""
    domains: set[str] = set()
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip().lstrip("*.")
        if not entry:
            continue
        try:
            domains.add(domain_key(entry))
        except Refused as exc:
            raise ValueError(f"{path}, line {number}: {entry!r} is not a domain name") from exc
    return frozenset(domains)


@dataclass(frozen=True)
class UrlPolicy:
    own_hosts: frozenset[str] = frozenset()
    blocklist: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, public_base_url: str, own_hosts: list[str], blocklist_file: str) -> UrlPolicy:
        names = [*own_hosts]
        if public_base_url:
            names.append(urlsplit(public_base_url).netloc)
        keys = frozenset(domain_key(n) for n in names if n.strip())
        blocked = read_blocklist(blocklist_file) if blocklist_file else frozenset()
        if blocked:
            log.info("url blocklist loaded", extra={"domains": len(blocked), "file": blocklist_file})
        return cls(own_hosts=keys, blocklist=blocked)

    def check(self, parts: SplitResult) -> None:
        """Raises Refused with the reason when the URL may not be a link's target."""
        if "@" in parts.netloc:
            raise Refused("must not contain user info (user:password@ before the host)")
        host = parse_host(parts.netloc)
        if host.address is not None:
            reason = ip_refusal(host.address)
            if reason is not None:
                raise Refused(f"must not point to {reason}")
            if str(host.address) in self.own_hosts | self._request_host():
                raise Refused("must not point to this shortener itself")
            if str(host.address) in self.blocklist:
                raise Refused("points to a blocked domain")
            return
        suffixes = _suffixes(host.labels)
        if any(s in LOCAL_SUFFIXES for s in suffixes):
            raise Refused(LOCAL_NAME)
        if host.name in self.own_hosts | self._request_host():
            raise Refused("must not point to this shortener itself")
        if any(s in self.blocklist for s in suffixes):
            raise Refused("points to a blocked domain")

    @staticmethod
    def _request_host() -> frozenset[str]:
        """Without a public_base_url the service's name is the one the client used."""
        if not has_request_context():
            return frozenset()
        try:
            return frozenset({domain_key(request.host)})
        except Refused:
            return frozenset()


DEFAULT = UrlPolicy()


def current() -> UrlPolicy:
    """The running app's policy (its settings), or the built-in rules outside an app."""
    if has_app_context():
        return current_app.extensions.get("urlpolicy", DEFAULT)
    return DEFAULT
