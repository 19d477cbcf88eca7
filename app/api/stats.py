"""/urls/<id>/stats and /stats/top: statistics read from the rollups (docs/analytics.md).

Only the link's owner's key or an admin key sees a link's numbers; anyone else gets the same
404 as for a missing link (app/access.py). Times are UTC; a range is [from, to), widened to
whole buckets. Unique visitors and the top tables come from daily rollups, so they cover the
whole UTC days the range touches.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app import access, spans, sql_stats
from app.api.params import int_param
from app.errors import ApiError
from app.links import visible_link
from app.schemas import timestamp
from app.services import services

bp = Blueprint("stats", __name__)

STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN = {"hour": timedelta(days=7), "day": timedelta(days=30)}
MAX_BUCKETS = 10_000
DIMENSIONS = {"referrer": "referrers", "browser": "browsers", "os": "operating_systems", "device": "devices"}


def _time_param(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.strip()) if len(raw) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise ApiError(
            400,
            f"Query parameter '{name}' must be an ISO 8601 date or date-time",
            {name: "not a date or date-time, e.g. 2026-11-30 or 2026-11-30T12:00:00Z"},
        )
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _floor(value: datetime, unit: str) -> datetime:
    value = value.replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if unit == "day" else value


def _ceil(value: datetime, unit: str) -> datetime:
    floor = _floor(value, unit)
    return floor if floor == value else floor + STEP[unit]


def _range(unit: str) -> tuple[datetime, datetime]:
    """[from, to) from the query, whole buckets of ``unit``; a bad range is a 400."""
    end = _time_param("to")
    start = _time_param("from")
    end = _ceil(end or datetime.now(UTC).replace(tzinfo=None), unit)
    start = _floor(start or end - DEFAULT_SPAN[unit], unit)
    if start >= end:
        raise ApiError(400, "'from' must be before 'to'", {"from": "not before 'to'"})
    if (end - start) / STEP[unit] > MAX_BUCKETS:
        raise ApiError(
            400,
            f"Range too long: at most {MAX_BUCKETS} buckets of one {unit}",
            {"to": f"at most {MAX_BUCKETS} {unit}s after 'from'"},
        )
    return start, end


def _granularity() -> str:
    value = request.args.get("granularity", "day")
    if value not in STEP:
        raise ApiError(400, "Query parameter 'granularity' must be hour or day", {"granularity": "hour or day"})
    return value


def _limit(name: str, default: int, maximum: int) -> int:
    value = int_param(name) or default
    if value > maximum:
        raise ApiError(400, f"Query parameter '{name}' must be at most {maximum}", {name: "too large"})
    return value


def _json_with_series(head: dict[str, Any], series: str, tail: dict[str, Any]) -> Response:
    """``head``, then "series" (JSON text PostgreSQL built), then ``tail``: one JSON object.

    The series is not parsed and dumped again: at 2,160 hourly buckets that alone cost more than
    the queries (docs/analytics.md)."""
    first = json.dumps(head)
    rest = json.dumps(tail)
    body = f'{first[:-1]}, "series": {series}, {rest[1:]}'
    return Response(body, mimetype="application/json")


@bp.get("/urls/<id:url_id>/stats")
def link_stats(url_id: int) -> Response:
    unit = _granularity()
    start, end = _range(unit)
    top = _limit("top", 10, 100)
    link = visible_link(url_id)
    db = services().db
    # Unique visitors and the top tables come from daily rows: the whole days the range touches.
    params = {"url_id": url_id, "start": start, "end": end, "day_end": _ceil(end, "day")}
    totals = db.fetch_one(sql_stats.STATS_SERIES_HOUR if unit == "hour" else sql_stats.STATS_SERIES_DAY, params)
    assert totals is not None  # an aggregate without GROUP BY always answers one row
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in DIMENSIONS.values()}
    for row in db.fetch_all(sql_stats.STATS_DIMENSIONS, params):
        table = tables[DIMENSIONS[row["dimension"]]]
        if len(table) < top:
            table.append({"value": row["value"], "clicks": int(row["clicks"])})
    clicks, bots = int(totals["clicks"]), int(totals["bots"])
    head = {
        "url_id": url_id,
        "short_code": link["short_code"],
        "from": timestamp(start),
        "to": timestamp(end),
        "granularity": unit,
        "total_clicks": clicks,
        "humans": clicks - bots,
        "bots": bots,
        "unique_visitors": int(totals["uniques"]),
    }
    return _json_with_series(head, totals["series"], tables)


@bp.get("/stats/top")
def top_links() -> Response:
    start, end = _range("day")
    limit = _limit("limit", 10, 1000)
    days, runs = spans.cover(start.date(), end.date())
    params = {
        "days": days,
        "span_days": [n for n, _ in runs],
        "span_starts": [first for _, first in runs],
        "owner_id": access.owner_filter(),
        "limit": limit,
    }
    with services().db.transaction() as cur:
        cur.execute(sql_stats.STATS_TOP_SETTINGS)
        cur.execute(sql_stats.STATS_TOP, params)
        rows = cur.fetchall()
    links = [
        {
            "url_id": r["url_id"],
            "short_code": r["short_code"],
            "clicks": int(r["clicks"]),
            "humans": int(r["clicks"] - r["bots"]),
            "bots": int(r["bots"]),
            "unique_visitors": int(r["uniques"]),
        }
        for r in rows
    ]
    return jsonify({"from": timestamp(start), "to": timestamp(end), "links": links})
