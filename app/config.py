"""Every setting of the service, read from the environment in this one place.

Each field is the variable ``SHORTENER_<FIELD>`` (upper case); docs/configuration.md lists
them with what they do. Gunicorn's config file reads the same object.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHORTENER_", extra="ignore")

    # PostgreSQL, normally through PgBouncer in transaction pooling mode.
    database_url: str = "postgresql://shortener:shortener@127.0.0.1:5432/shortener"
    db_pool_max: int = Field(8, ge=1)
    db_pool_timeout: float = Field(2.0, gt=0, description="seconds to wait for a free pooled connection")
    db_connect_timeout: int = Field(3, ge=1)
    db_statement_timeout_ms: int = Field(5000, ge=100)

    # Redis: the redirect cache and the click queue. Empty disables Redis altogether.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout: float = Field(0.25, gt=0)
    redis_connect_timeout: float = Field(0.25, gt=0)
    breaker_failure_threshold: int = Field(3, ge=1)
    breaker_reset_seconds: float = Field(5.0, gt=0)
    cache_ttl_seconds: int = Field(3600, ge=1)
    cache_negative_ttl_seconds: int = Field(10, ge=1)
    cache_tombstone_seconds: int = Field(5, ge=1)
    click_stream: str = "shortener:clicks"

    # HTTP behaviour.
    public_base_url: str = ""
    list_default_limit: int = Field(10000, ge=1000)
    per_page_default: int = Field(20, ge=1)
    per_page_max: int = Field(1000, ge=1)
    max_content_length: int = Field(5 * 1024 * 1024, ge=1024)
    log_level: str = "INFO"
    # Which requests get the app's own JSON access line. Behind Nginx, whose JSON access log
    # already has every request with the same request id, "errors" saves the cost of a line
    # per redirect (docs/capacity.md gives the figure).
    access_log: Literal["all", "errors", "off"] = "all"
    migrate_on_start: bool = True
    # Who runs `python -m app.migrate`: a role that owns the schema. The deployment gives the
    # service a role that may only read and write rows, so its own URL cannot migrate; empty
    # means database_url (development, tests).
    migrate_database_url: str = ""

    # Gunicorn (app/gunicorn_conf.py).
    bind: str = "127.0.0.1:8000"
    workers: int = Field(2, ge=1)
    threads: int = Field(16, ge=1)
    graceful_timeout: int = Field(20, ge=1)
    max_requests: int = Field(20000, ge=0)

    # The click worker (python -m app.clickworker).
    clickworker_batch_size: int = Field(500, ge=1)
    clickworker_block_ms: int = Field(1000, ge=1)
    clickworker_linger_ms: int = Field(200, ge=0, le=5000)
    clickworker_claim_idle_ms: int = Field(30000, ge=1000)
    clickworker_metrics_addr: str = "127.0.0.1:9101"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
