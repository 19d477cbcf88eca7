"""Every setting of the service, read from the environment in this one place.

Each field is the variable ``SHORTENER_<FIELD>`` (upper case); docs/configuration.md lists
them with what they do. Gunicorn's config file reads the same object.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from limits import parse_many
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHORTENER_", extra="ignore")

    # PostgreSQL, normally through PgBouncer in transaction pooling mode.
    database_url: str = "postgresql://shortener:shortener@127.0.0.1:5432/shortener"
    db_pool_max: int = Field(8, ge=1)
    db_pool_timeout: float = Field(2.0, gt=0, description="seconds to wait for a free pooled connection")
    db_connect_timeout: int = Field(3, ge=1)
    db_statement_timeout_ms: int = Field(5000, ge=100)
    # Dead-peer detection on every database connection (libpq's TCP options). A peer that
    # vanishes without a FIN or RST (a partition, a host powered off, a relay gone) otherwise
    # holds a call for the kernel's defaults: ~2 h of silence before the first keepalive, ~15
    # min of retransmissions for a query sent into the void. These bound both to ~20 s.
    db_keepalives_idle: int = Field(10, ge=1, description="seconds of silence before the first probe")
    db_keepalives_interval: int = Field(5, ge=1, description="seconds between unanswered probes")
    db_keepalives_count: int = Field(3, ge=1, description="unanswered probes that end the connection")
    db_tcp_user_timeout_ms: int = Field(20000, ge=0, description="ms sent data may stay unacknowledged; 0: kernel's")

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

    # Access (docs/architecture.md, "Access"). "keys" unless told otherwise: a deployment
    # that forgets the setting is closed, not open. "open" is the contract without credentials
    # (make dev, the contract tests, the evaluator).
    access_profile: Literal["open", "keys"] = "keys"
    # In the keys profile, POST /urls without a key and without user_id makes a link that
    # belongs to nobody (and the web page's form works). False: a key is needed for every link.
    anonymous_create: bool = True
    # Comma-separated CIDRs. /metrics answers these addresses (and admin keys) in the keys profile.
    metrics_allow: str = "127.0.0.0/8,::1"
    # Comma-separated CIDRs of the proxies whose X-Real-IP names the client (Nginx on the host).
    trusted_proxies: str = "127.0.0.0/8,::1"

    # Rate limits in the keys profile, in the notation of the `limits` library ("N/period",
    # several separated by ";"), counted per API key, or per client address without one.
    rate_limit_read: str = "50/second;1500/minute"
    rate_limit_write: str = "10/second;300/minute"
    rate_limit_create: str = "20/second;600/minute"
    rate_limit_anonymous_create: str = "6/minute;60/hour"
    # Admin keys get one shared budget with room for automation (make bench: ~500 links/s).
    rate_limit_admin: str = "2000/second"

    # Gunicorn (app/gunicorn_conf.py).
    bind: str = "127.0.0.1:8000"
    workers: int = Field(2, ge=1)
    threads: int = Field(16, ge=1)
    graceful_timeout: int = Field(20, ge=1)
    max_requests: int = Field(20000, ge=0)

    # The click worker (python -m app.clickworker).
    # Clicks per batch: the rollups are updated once per batch and key, so larger batches cost
    # PostgreSQL less per click (docs/capacity.md, "Ingestion": 2,000 a quarter less than 500).
    clickworker_batch_size: int = Field(2000, ge=1)
    clickworker_block_ms: int = Field(1000, ge=1)
    clickworker_linger_ms: int = Field(200, ge=0, le=5000)
    clickworker_claim_idle_ms: int = Field(30000, ge=1000)
    clickworker_metrics_addr: str = "127.0.0.1:9101"
    # Consumers per worker process (threads): one waits for PostgreSQL while another parses.
    clickworker_threads: int = Field(2, ge=1, le=16)

    # Click analytics (docs/analytics.md). Raw client addresses are not stored unless this says
    # so; the statistics only need the daily visitor id.
    clicks_keep_addresses: bool = False
    # Months of raw click rows kept (whole monthly partitions are dropped); 0 keeps them all.
    # The rollups behind the statistics and the `events` rows are kept either way.
    clicks_retention_months: int = Field(13, ge=0)
    # Monthly partitions created ahead of time by the worker's maintenance.
    clicks_partitions_ahead: int = Field(2, ge=1, le=24)
    # How often the worker runs that maintenance (partitions, retention, visitor key rotation).
    clicks_maintenance_seconds: int = Field(3600, ge=10)

    @field_validator("metrics_allow", "trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        from app.addresses import Networks

        Networks(value)  # raises ValueError naming the bad entry
        return value

    @field_validator(
        "rate_limit_read", "rate_limit_write", "rate_limit_create", "rate_limit_anonymous_create", "rate_limit_admin"
    )
    @classmethod
    def _limit(cls, value: str) -> str:
        if not parse_many(value):
            raise ValueError("no limit given")
        return value

    # Safe input: the URL policy and the caps on hostile input (app/urlpolicy.py, app/errors.py,
    # app/api/params.py; docs/configuration.md, "Safe input").
    # A file of blocked domains, one a line, "#" comments; read once at start. Empty: none.
    url_blocklist_file: str = ""
    # More names of this service, comma-separated, besides public_base_url's host: links to
    # them would loop.
    own_hostnames: str = ""
    json_max_depth: int = Field(32, ge=2, le=500)
    event_details_max_bytes: int = Field(16 * 1024, ge=256)
    # OFFSET reads and drops every row before the page: past this, paging is refused (400).
    paging_max_offset: int = Field(1_000_000, ge=1000)
    # Queued clicks GET /events writes itself before listing; the click worker does the rest.
    events_drain_max: int = Field(5000, ge=0)
    # How far above the largest id a bulk-imported row's id may be.
    bulk_id_headroom: int = Field(1_000_000, ge=1)

    @property
    def db_connect_options(self) -> dict[str, int]:
        """libpq connection parameters for every connection the service opens (app/db.py)."""
        return {
            "connect_timeout": self.db_connect_timeout,
            "keepalives": 1,
            "keepalives_idle": self.db_keepalives_idle,
            "keepalives_interval": self.db_keepalives_interval,
            "keepalives_count": self.db_keepalives_count,
            "tcp_user_timeout": self.db_tcp_user_timeout_ms,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
