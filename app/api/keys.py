"""/keys: API keys of the keys profile. Created (shown once), listed and read (never the
secret), revoked. Who may do what is decided in app/access.py."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from app import access, keys, sql
from app.api.params import paging
from app.errors import ApiError, json_object, validate
from app.schemas import KeyIn, key_out
from app.services import services

bp = Blueprint("keys", __name__)


def _load(key_id: int) -> dict[str, Any]:
    return access.visible(services().db.fetch_one(sql.GET_KEY, (key_id,)), "API key not found")


@bp.post("/keys")
def create_key() -> Response:
    data = validate(KeyIn, json_object())
    is_admin, user_id = access.key_owner(data.admin, data.user_id)
    db = services().db
    if user_id is not None and db.fetch_one(sql.USER_EXISTS, (user_id,)) is None:
        raise ApiError(404, "User not found", {"user_id": "no such user"})
    secret, row = keys.create(db, user_id=user_id, is_admin=is_admin, name=data.name or "")
    response = jsonify({**key_out(row), "key": secret})
    response.status_code = 201
    response.headers["Location"] = f"/keys/{row['id']}"
    # The one answer that carries the secret: no cache along the way may keep it.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/keys")
def list_keys() -> Response:
    limit, offset = paging()
    rows = services().db.fetch_all(sql.LIST_KEYS, {"user_id": access.owner_filter(), "limit": limit, "offset": offset})
    return jsonify([key_out(r) for r in rows])


@bp.get("/keys/<id:key_id>")
def get_key(key_id: int) -> Response:
    return jsonify(key_out(_load(key_id)))


@bp.delete("/keys/<id:key_id>")
def revoke_key(key_id: int) -> Response:
    _load(key_id)
    keys.revoke(services().db, key_id)
    return Response(status=204)
