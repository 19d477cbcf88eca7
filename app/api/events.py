"""/events: list (after writing any clicks still queued) and create."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from psycopg2.extras import Json

from app import access, clicks, sql
from app.api.params import int_param, paging, str_param
from app.errors import ApiError, json_object, validate
from app.links import visible_link
from app.schemas import EventIn, event_out
from app.services import services

bp = Blueprint("events", __name__)


@bp.get("/events")
def list_events() -> Response:
    limit, offset = paging()
    filters = {
        "event_type": str_param("event_type", 50),
        "url_id": int_param("url_id"),
        "user_id": int_param("user_id"),
    }
    svc = services()
    # A client that followed a link and then lists events must see its click, even when the
    # click worker has not written it yet.
    clicks.drain(svc.db, svc.cache, svc.settings.events_drain_max)
    # The most selective filter given leads: its index bounds the scan (see sql.LIST_EVENTS_BY).
    leading = next((name for name in ("url_id", "user_id", "event_type") if filters[name] is not None), None)
    statement = sql.LIST_EVENTS_BY[leading] if leading else sql.LIST_EVENTS
    params = {**filters, "owner_id": access.owner_filter(), "limit": limit, "offset": offset}
    rows = svc.db.fetch_all(statement, params)
    return jsonify([event_out(r) for r in rows])


@bp.post("/events")
def create_event() -> Response:
    data = validate(EventIn, json_object())
    db = services().db
    if data.url_id is not None:
        visible_link(data.url_id, {"url_id": "no such url"})
    if data.user_id is not None and db.fetch_one(sql.USER_EXISTS, (data.user_id,)) is None:
        raise ApiError(404, "User not found", {"user_id": "no such user"})
    data = data.model_copy(update={"user_id": access.owner_of_new(data.user_id)})
    row = db.fetch_one(
        sql.INSERT_EVENT,
        {
            "url_id": data.url_id,
            "user_id": data.user_id,
            "event_type": data.event_type,
            "details": Json(data.details or {}),
        },
    )
    response = jsonify(event_out(row))
    response.status_code = 201
    return response
