"""/urls: create, list, read, update, delete. Every change invalidates the redirect cache."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify
from psycopg2.extras import Json

from app import access, sql
from app.api.params import bool_param, int_param, paging
from app.errors import ApiError, json_object, validate
from app.links import NOT_FOUND, base_url, create_link, invalidate, visible_link
from app.schemas import UrlIn, UrlUpdate, url_out
from app.services import services

log = logging.getLogger(__name__)

bp = Blueprint("urls", __name__)


def _event(cur: Any, event_type: str, row: dict[str, Any], details: dict[str, Any]) -> None:
    cur.execute(
        sql.INSERT_EVENT,
        {"url_id": row["id"], "user_id": row["user_id"], "event_type": event_type, "details": Json(details)},
    )


@bp.post("/urls")
def create_url() -> Response:
    data = validate(UrlIn, json_object())
    owner = access.owner_of_new(data.user_id)
    if data.user_id is not None and services().db.fetch_one(sql.USER_EXISTS, (data.user_id,)) is None:
        raise ApiError(404, "User not found", {"user_id": "no such user"})
    row = create_link(data.model_copy(update={"user_id": owner}))
    response = jsonify(url_out(row, base_url()))
    response.status_code = 201
    response.headers["Location"] = f"/urls/{row['id']}"
    return response


@bp.get("/urls")
def list_urls() -> Response:
    limit, offset = paging()
    filters = {"user_id": int_param("user_id"), "is_active": bool_param("is_active")}
    params = {**filters, "owner_id": access.owner_filter(), "limit": limit, "offset": offset}
    rows = services().db.fetch_all(sql.LIST_URLS, params)
    base = base_url()
    return jsonify([url_out(r, base) for r in rows])


@bp.get("/urls/<id:url_id>")
def get_url(url_id: int) -> Response:
    return jsonify(url_out(visible_link(url_id), base_url()))


@bp.put("/urls/<id:url_id>")
def update_url(url_id: int) -> Response:
    body = json_object()
    data = validate(UrlUpdate, body)
    changes = {k: v for k, v in data.model_dump().items() if k in body}
    if not changes:
        raise ApiError(
            422,
            "Nothing to update: send title, is_active, original_url, redirect_type, expires_at or max_clicks",
            {"body": "no updatable field"},
        )
    for field in ("is_active", "original_url", "redirect_type"):
        if field in changes and changes[field] is None:
            raise ApiError(422, "Validation failed", {field: "must not be null"})
    with services().db.transaction() as cur:
        cur.execute(sql.GET_URL_FOR_UPDATE, (url_id,))
        current = access.visible(cur.fetchone(), NOT_FOUND)
        cur.execute(sql.UPDATE_URL, {**current, **changes})
        row = cur.fetchone()
        for field, value in changes.items():
            _event(cur, "updated", row, {"field": field, "new_value": value})
    invalidate(row["short_code"])
    return jsonify(url_out(row, base_url()))


@bp.delete("/urls/<id:url_id>")
def delete_url(url_id: int) -> Response:
    with services().db.transaction() as cur:
        cur.execute(sql.DELETE_URL, (url_id,))
        # Not the caller's: raising rolls the deletion back.
        row = access.visible(cur.fetchone(), NOT_FOUND)
        _event(cur, "deleted", row, {"short_code": row["short_code"]})
    invalidate(row["short_code"])
    return Response(status=204)
