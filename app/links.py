"""Links: making one (POST /urls and the web page's form, app/api/web.py) and loading one
through the access rules (every /urls/<id>... view and POST /events)."""

from __future__ import annotations

import logging
import secrets
import string
from typing import Any

from flask import request
from psycopg2.extras import Json

from app import access, sql
from app.cache import Unavailable
from app.errors import ApiError
from app.schemas import UrlIn
from app.services import services

log = logging.getLogger(__name__)

CODE_ALPHABET = string.ascii_letters + string.digits
CODE_LENGTH = 6
CODE_ATTEMPTS = 8
# The one answer for a link that is missing, deleted or not the caller's.
NOT_FOUND = "URL not found"


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def base_url() -> str:
    return services().settings.public_base_url or request.host_url


def visible_link(url_id: int, details: dict[str, str] | None = None) -> dict[str, Any]:
    """The link with this id when the caller may see it; otherwise the one 404 of
    :func:`app.access.visible` (``details`` name the field that pointed at it, if any)."""
    return access.visible(services().db.fetch_one(sql.GET_URL, (url_id,)), NOT_FOUND, details)


def invalidate(code: str) -> None:
    """After a commit. If Redis is unreachable the cache is emptied when it comes back."""
    try:
        services().cache.invalidate(code)
    except Unavailable as exc:
        log.warning("could not invalidate cached link", extra={"short_code": code, "error": str(exc)})


def create_link(data: UrlIn, **event_details: Any) -> dict[str, Any]:
    """Inserts a link with a fresh (or the requested) code and its ``created`` event."""
    params = {**data.model_dump(), "details": Json(event_details)}
    row = None
    for _ in range(1 if data.short_code else CODE_ATTEMPTS):
        params["short_code"] = data.short_code or new_code()
        row = services().db.fetch_one(sql.INSERT_URL, params)
        if row is not None:
            break
    if row is None:
        if data.short_code:
            raise ApiError(409, "This short code is already taken", {"short_code": "already taken"})
        # 62^6 codes: eight collisions in a row means the space is nearly full.
        raise ApiError(503, "Could not find a free short code, try again")  # pragma: no cover
    # A custom code may sit in the negative cache from an earlier miss. A fresh random code
    # cannot, and leaving it alone lets its first redirects fill the cache at once.
    if data.short_code:
        invalidate(row["short_code"])
    return row
