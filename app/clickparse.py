"""What a click becomes for the statistics: browser, OS, device type, bot flag, referrer domain,
visitor id. Done by the click worker, never on the redirect path (docs/analytics.md).

User agents are parsed by ua-parser (the ua-core rules) and bots recognised by CrawlerDetect
or by ua-parser's "Spider" device. Both are regular-expression batteries costing milliseconds
per string, and real traffic repeats a few thousand user agents: results are cached per string.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import ua_parser
from crawlerdetect import CrawlerDetect

# What a dimension shows when the click did not say (no referrer, an empty user agent).
NONE = "(none)"
OTHER = "Other"
# Device types, from the OS and device family ua-parser names.
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS", "Firefox OS"}
_DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD", "OpenBSD"}
_TABLET_WORDS = ("ipad", "tablet", "kindle", "nexus 7", "nexus 9", "nexus 10", "galaxy tab")

_crawlers = CrawlerDetect()


@dataclass(frozen=True)
class Agent:
    browser: str
    os: str
    device: str
    is_bot: bool


@functools.lru_cache(maxsize=20_000)
def agent(user_agent: str) -> Agent:
    """A user agent's browser, OS, device type (desktop, mobile, tablet, bot, other) and bot flag."""
    if not user_agent:
        return Agent(NONE, NONE, "other", False)
    parsed = ua_parser.parse(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent else OTHER
    os_name = parsed.os.family if parsed.os else OTHER
    device_family = parsed.device.family if parsed.device else OTHER
    is_bot = device_family == "Spider" or bool(_crawlers.isCrawler(user_agent))
    return Agent(browser, os_name, _device_type(os_name, device_family, is_bot), is_bot)


def warm_up() -> None:
    """Loads the rules and compiles every regular expression now (seconds of CPU), rather than
    inside the first batches: a string no rule matches walks them all."""
    ua_parser.parse("shortener-warm-up/0")
    _crawlers.isCrawler("shortener-warm-up/0")


def _device_type(os_name: str, device_family: str, is_bot: bool) -> str:
    if is_bot:
        return "bot"
    if any(word in device_family.lower() for word in _TABLET_WORDS):
        return "tablet"
    if os_name in _MOBILE_OS:
        return "mobile"
    if os_name in _DESKTOP_OS:
        return "desktop"
    return "other"


@functools.lru_cache(maxsize=20_000)
def referrer_domain(referrer: str) -> str:
    """The referrer's host name, lower case, without "www."; NONE without a usable one."""
    if not referrer:
        return NONE
    try:
        host = urlsplit(referrer.strip()).hostname
    except ValueError:
        return OTHER
    if not host:
        return OTHER
    return host.removeprefix("www.")


def visitor_id(day_key: bytes, address: str, user_agent: str) -> str:
    """The same visitor on the same UTC day gives the same id; the key changes every day and is
    deleted after two, so ids cannot be linked across days nor turned back into addresses."""
    message = f"{address}\n{user_agent}".encode("utf-8", "replace")
    return hmac.new(day_key, message, hashlib.sha256).hexdigest()[:32]


def storable_address(address: str) -> str | None:
    """A client address fit for the ``inet`` column, or None (the edge sends what Nginx saw)."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return None
