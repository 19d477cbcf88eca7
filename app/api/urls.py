"""/urls: create, list, read, update, delete. Every change invalidates the redirect cache."""

from __future__ import annotations

import logging
import secrets
import string
from typing import Any

from flask import Blueprint, Response, jsonify, request
from psycopg2.extras import Json

from app import services, sql
from app.api.params import bool_param, int_param, paging
from app.cache import Unavailable
from app.errors import ApiError, json_object, validate
from app.schemas import UrlIn, UrlUpdate, url_out

log = logging.getLogger(__name__)

bp = Blueprint("urls", __name__)

CODE_ALPHABET = string.ascii_letters + string.digits
CODE_LENGTH = 6
CODE_ATTEMPTS = 8


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def base_url() -> str:
    return services().settings.public_base_url or request.host_url


def invalidate(code: str) -> None:
    """After a commit. If Redis is unreachable the cache is emptied when it comes back."""
    try:
        services().cache.invalidate(code)
    except Unavailable as exc:
        log.warning("could not invalidate cached link", extra={"short_code": code, "error": str(exc)})


def _event(cur: Any, event_type: str, row: dict[str, Any], details: dict[str, Any]) -> None:
    cur.execute(
        sql.INSERT_EVENT,
        {"url_id": row["id"], "user_id": row["user_id"], "event_type": event_type, "details": Json(details)},
    )


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


@bp.post("/urls")
def create_url() -> Response:
    data = validate(UrlIn, json_object())
    if data.user_id is not None and services().db.fetch_one(sql.USER_EXISTS, (data.user_id,)) is None:
        raise ApiError(404, "User not found", {"user_id": "no such user"})
    row = create_link(data)
    response = jsonify(url_out(row, base_url()))
    response.status_code = 201
    response.headers["Location"] = f"/urls/{row['id']}"
    return response


@bp.get("/urls")
def list_urls() -> Response:
    limit, offset = paging()
    filters = {"user_id": int_param("user_id"), "is_active": bool_param("is_active")}
    rows = services().db.fetch_all(sql.LIST_URLS, {**filters, "limit": limit, "offset": offset})
    base = base_url()
    return jsonify([url_out(r, base) for r in rows])


def _load(url_id: int) -> dict[str, Any]:
    row = services().db.fetch_one(sql.GET_URL, (url_id,)) if url_id < 2**63 else None
    if row is None:
        raise ApiError(404, "URL not found")
    return row


@bp.get("/urls/<int:url_id>")
def get_url(url_id: int) -> Response:
    return jsonify(url_out(_load(url_id), base_url()))


@bp.put("/urls/<int:url_id>")
def update_url(url_id: int) -> Response:
    body = json_object()
    data = validate(UrlUpdate, body)
    changes = {k: v for k, v in data.model_dump().items() if k in body}
    if not changes:
        raise ApiError(
            422,
            "Nothing to update: send title, is_active, original_url or redirect_type",
            {"body": "no updatable field"},
        )
    for field in ("is_active", "original_url", "redirect_type"):
        if field in changes and changes[field] is None:
            raise ApiError(422, "Validation failed", {field: "must not be null"})
    if url_id >= 2**63:
        raise ApiError(404, "URL not found")
    with services().db.transaction() as cur:
        cur.execute(sql.GET_URL_FOR_UPDATE, (url_id,))
        current = cur.fetchone()
        if current is None:
            raise ApiError(404, "URL not found")
        cur.execute(sql.UPDATE_URL, {**current, **changes})
        row = cur.fetchone()
        for field, value in changes.items():
            _event(cur, "updated", row, {"field": field, "new_value": value})
    invalidate(row["short_code"])
    return jsonify(url_out(row, base_url()))


@bp.delete("/urls/<int:url_id>")
def delete_url(url_id: int) -> Response:
    if url_id >= 2**63:
        raise ApiError(404, "URL not found")
    with services().db.transaction() as cur:
        cur.execute(sql.DELETE_URL, (url_id,))
        row = cur.fetchone()
        if row is None:
            raise ApiError(404, "URL not found")
        _event(cur, "deleted", row, {"short_code": row["short_code"]})
    invalidate(row["short_code"])
    return Response(status=204)
