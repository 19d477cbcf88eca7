"""Request bodies and responses as pydantic models, in strict mode.

Strict mode is what makes rule 5 of the contract hold without field-by-field checks: a number
where a string belongs, a string or ``true`` where an id belongs, a list where ``details``
belongs are all validation errors (422). The same models produce /openapi.json.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from flask import has_app_context
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from app import urlpolicy
from app.services import services

MAX_URL_LENGTH = 2048
CODE_PATTERN = r"^[A-Za-z0-9_-]{3,32}$"
# Paths of the API itself and names an operator may want later; a custom code may not take them.
RESERVED_CODES = frozenset(
    {
        "users",
        "urls",
        "events",
        "stats",
        "health",
        "metrics",
        "openapi",
        "static",
        "api",
        "admin",
        "docs",
        "favicon",
        "robots",
        "login",
        "logout",
        "shorten",
        "new",
        "www",
        "nginx_status",
    }
)


def storable(value: str) -> str:
    """PostgreSQL stores neither NUL characters nor lone surrogates, in text or in jsonb."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text") from exc
    return value


def _storable_json(value: Any) -> Any:
    if isinstance(value, str):
        storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            _storable_json(item)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item)
    return value


DEFAULT_DETAILS_MAX_BYTES = 16 * 1024


def _bounded_details(value: dict[str, Any]) -> dict[str, Any]:
    """An event's details are served back in every listing: their size is capped (the
    setting event_details_max_bytes; counted as compact UTF-8 JSON, as the client sent it)."""
    limit = services().settings.event_details_max_bytes if has_app_context() else DEFAULT_DETAILS_MAX_BYTES
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"must be at most {limit} bytes as JSON (is {size})")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _email(value: str) -> str:
    value = value.strip()
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError("is not a valid email address") from exc
    # Stored as the client wrote it; uniqueness ignores case (see the migration).
    return value


def _http_url(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError("is not a valid URL") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    if not host:
        raise ValueError("must have a host")
    # Addresses, local names, loops, blocked and look-alike domains: app/urlpolicy.py.
    urlpolicy.current().check(parts)
    return value


def _code(value: str) -> str:
    if not re.match(CODE_PATTERN, value):
        raise ValueError("must be 3 to 32 letters, digits, '-' or '_'")
    if value.lower() in RESERVED_CODES:
        raise ValueError("is reserved")
    return value


Text = Annotated[StrictStr, AfterValidator(storable)]
Username = Annotated[Text, Field(max_length=100), AfterValidator(_not_blank)]
Email = Annotated[Text, Field(max_length=254), AfterValidator(_email)]
HttpUrl = Annotated[Text, AfterValidator(_http_url)]
ShortCode = Annotated[Text, AfterValidator(_code)]
Title = Annotated[Text, Field(max_length=500)]
RedirectType = Literal[301, 302, 307, 308]
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


def _utc_timestamp(value: str) -> str:
    """An ISO 8601 date-time, stored as UTC without a zone (as every timestamp here)."""
    try:
        moment = datetime.fromisoformat(value.strip()) if len(value) <= 40 else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-12-31T23:59:59Z")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat()


# Link options (docs/analytics.md): after expires_at, or max_clicks clicks, the link is a 404.
ExpiresAt = Annotated[StrictStr, AfterValidator(_utc_timestamp)]
MaxClicks = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class UserIn(Strict):
    username: Username
    email: Email


class UserUpdate(Strict):
    username: Username | None = None
    email: Email | None = None


class UrlIn(Strict):
    original_url: HttpUrl
    user_id: Id | None = None
    title: Title | None = None
    short_code: ShortCode | None = None
    redirect_type: RedirectType = 302
    expires_at: ExpiresAt | None = None
    max_clicks: MaxClicks | None = None


class UrlUpdate(Strict):
    original_url: HttpUrl | None = None
    title: Title | None = None
    is_active: StrictBool | None = None
    redirect_type: RedirectType | None = None
    # null removes the option.
    expires_at: ExpiresAt | None = None
    max_clicks: MaxClicks | None = None


class EventIn(Strict):
    event_type: Annotated[Text, Field(max_length=50), AfterValidator(_not_blank)]
    url_id: Id | None = None
    user_id: Id | None = None
    details: Annotated[dict[str, Any], AfterValidator(_storable_json), AfterValidator(_bounded_details)] | None = None


# --- responses (documentation of /openapi.json and the shape the API returns) -------------
class User(BaseModel):
    id: int
    username: str
    email: str
    created_at: str


class Url(BaseModel):
    id: int
    user_id: int | None
    short_code: str
    original_url: str
    title: str | None
    is_active: bool
    redirect_type: int
    created_at: str
    updated_at: str
    short_url: str
    expires_at: str | None = None
    max_clicks: int | None = None


class Event(BaseModel):
    id: int
    url_id: int | None
    user_id: int | None
    event_type: str
    timestamp: str
    details: dict[str, Any]


class Error(BaseModel):
    error: str
    details: dict[str, str] | None = None


class BulkResult(BaseModel):
    imported: int
    count: int


def timestamp(value: datetime) -> str:
    return value.replace(microsecond=0).isoformat()


def user_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "email": row["email"],
        "created_at": timestamp(row["created_at"]),
    }


def url_out(row: dict[str, Any], base_url: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "short_code": row["short_code"],
        "original_url": row["original_url"],
        "title": row["title"],
        "is_active": row["is_active"],
        "redirect_type": row["redirect_type"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "short_url": f"{base_url.rstrip('/')}/{row['short_code']}",
        "expires_at": timestamp(row["expires_at"]) if row.get("expires_at") else None,
        "max_clicks": row.get("max_clicks"),
    }


def event_out(row: dict[str, Any]) -> dict[str, Any]:
    details = row["details"]
    return {
        "id": row["id"],
        "url_id": row["url_id"],
        "user_id": row["user_id"],
        "event_type": row["event_type"],
        "timestamp": timestamp(row["timestamp"]),
        "details": details if isinstance(details, dict) else {},
    }


# --- API keys (app/api/keys.py) -----------------------------------------------------------
class KeyIn(Strict):
    name: Annotated[Text, Field(max_length=100)] | None = None
    user_id: Id | None = None
    admin: StrictBool = False


class ApiKey(BaseModel):
    id: int
    user_id: int | None
    admin: bool
    name: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself: shown in this answer only, never again")


def key_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "admin": row["is_admin"],
        "name": row["name"],
        "prefix": row["prefix"],
        "created_at": timestamp(row["created_at"]),
        "last_used_at": timestamp(row["last_used_at"]) if row["last_used_at"] else None,
        "revoked_at": timestamp(row["revoked_at"]) if row["revoked_at"] else None,
    }


# --- statistics (app/api/stats.py; docs/analytics.md) -------------------------------------------
class StatsBucket(BaseModel):
    time: str
    clicks: int
    humans: int
    bots: int
    # Granularity "day" only: a visitor id lives one UTC day, so finer buckets have none.
    unique_visitors: int | None = None


class StatsCount(BaseModel):
    value: str
    clicks: int


class LinkStats(BaseModel):
    url_id: int
    short_code: str
    start: str = Field(alias="from")
    to: str
    granularity: Literal["hour", "day"]
    total_clicks: int
    humans: int
    bots: int
    unique_visitors: int
    series: list[StatsBucket]
    referrers: list[StatsCount]
    browsers: list[StatsCount]
    operating_systems: list[StatsCount]
    devices: list[StatsCount]


class TopLink(BaseModel):
    url_id: int
    short_code: str
    clicks: int
    humans: int
    bots: int
    unique_visitors: int


class TopLinks(BaseModel):
    start: str = Field(alias="from")
    to: str
    links: list[TopLink]
