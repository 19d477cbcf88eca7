"""The per-app singletons every request uses (settings, database pool, cache), and their getter."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from app.addresses import Networks
from app.cache import Cache
from app.config import Settings
from app.db import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    cache: Cache
    trusted_proxies: Networks
    metrics_allow: Networks
    # API key id -> when this process last wrote its last_used_at (app/access.py).
    key_touches: dict[int, float] = field(default_factory=dict)


def services() -> Services:
    return current_app.extensions["shortener"]
