"""/users: create, bulk import, list, read, update, delete."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import psycopg2
from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError

from app import access, sql
from app.api.params import paging
from app.errors import ApiError, json_object, validate
from app.schemas import UserIn, UserUpdate, user_out
from app.services import services

bp = Blueprint("users", __name__)


def _created(body: Any, status: int = 201) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _check_free(cur: Any, user_id: int, username: str | None, email: str | None) -> None:
    """Under per-name advisory locks, so two concurrent requests cannot both take a name."""
    for value in sorted(v for v in (username, email) if v is not None):
        cur.execute(sql.LOCK_USER_NAMES, (value,))
    cur.execute(sql.USER_TAKEN, {"username": username, "email": email, "id": user_id})
    taken = cur.fetchone()
    if taken is not None:
        field = "username" if username is not None and taken["username"] == username else "email"
        raise ApiError(409, f"A user with this {field} already exists", {field: "already taken"})


@bp.post("/users")
def create_user() -> Response:
    data = validate(UserIn, json_object())
    db = services().db
    try:
        with db.transaction() as cur:
            _check_free(cur, 0, data.username, data.email)
            cur.execute(sql.INSERT_USER, data.model_dump())
            row = cur.fetchone()
    except psycopg2.errors.UniqueViolation as exc:
        raise ApiError(409, "A user with this email already exists", {"email": "already taken"}) from exc
    return _created(user_out(row))


@bp.get("/users")
def list_users() -> Response:
    limit, offset = paging()
    rows = services().db.fetch_all(sql.LIST_USERS, (limit, offset))
    return jsonify([user_out(r) for r in rows])


@bp.get("/users/<id:user_id>")
def get_user(user_id: int) -> Response:
    access.require_user(user_id)
    row = services().db.fetch_one(sql.GET_USER, (user_id,))
    if row is None:
        raise ApiError(404, "User not found")
    return jsonify(user_out(row))


@bp.put("/users/<id:user_id>")
def update_user(user_id: int) -> Response:
    access.require_user(user_id)
    data = validate(UserUpdate, json_object())
    db = services().db
    try:
        with db.transaction() as cur:
            _check_free(cur, user_id, data.username, data.email)
            cur.execute(sql.UPDATE_USER, {"id": user_id, **data.model_dump()})
            row = cur.fetchone()
    except psycopg2.errors.UniqueViolation as exc:
        raise ApiError(409, "A user with this email already exists", {"email": "already taken"}) from exc
    if row is None:
        raise ApiError(404, "User not found")
    return jsonify(user_out(row))


@bp.delete("/users/<id:user_id>")
def delete_user(user_id: int) -> Response:
    access.require_user(user_id)
    if services().db.execute(sql.DELETE_USER, (user_id,)) == 0:
        raise ApiError(404, "User not found")
    return Response(status=204)


def _parse_created_at(value: str | None) -> datetime | None:
    if not value or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace(" ", "T")).replace(tzinfo=None)
    except ValueError:
        return None


@bp.post("/users/bulk")
def bulk_users() -> Response:
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "Send the CSV as multipart/form-data in a field named 'file'")
    try:
        text = upload.read().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ApiError(400, "The file is not a readable UTF-8 CSV") from exc
    if not header:
        raise ApiError(400, "The CSV file is empty")
    missing = [c for c in ("username", "email") if c not in header]
    if missing:
        raise ApiError(422, "The CSV header must name username and email", {c: "missing column" for c in missing})
    reader.fieldnames = header
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ApiError(400, f"The CSV file is malformed: {exc}") from exc

    processed = 0
    invalid: dict[str, str] = {}
    db = services().db
    with db.transaction() as cur:
        for number, row in enumerate(rows, start=2):
            try:
                user = UserIn.model_validate(
                    {"username": (row.get("username") or ""), "email": (row.get("email") or "")}
                )
            except ValidationError:
                invalid[f"line {number}"] = "invalid username or email"
                continue
            raw_id = (row.get("id") or "").strip()
            params = {
                "username": user.username,
                "email": user.email,
                "created_at": _parse_created_at(row.get("created_at")),
            }
            if raw_id.isdigit() and 0 < int(raw_id) < 2**63:
                cur.execute(sql.EMAIL_OWNER, (user.email,))
                owner = cur.fetchone()
                if owner is None or owner["id"] == int(raw_id):
                    cur.execute(sql.UPSERT_USER_WITH_ID, {"id": int(raw_id), **params})
            else:
                cur.execute(sql.INSERT_USER_IF_NEW_EMAIL, params)
            processed += 1
        cur.execute(sql.RESET_SEQUENCES)
    body: dict[str, Any] = {"imported": processed, "count": processed}
    if invalid:
        body["skipped"] = len(invalid)
        body["errors"] = dict(list(invalid.items())[:50])
    return _created(body)
