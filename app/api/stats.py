"""/urls/<id>/stats and /stats/top: statistics read from the rollups (docs/analytics.md).

Only the link's owner's key or an admin key sees a link's numbers; anyone else gets the same
404 as for a missing link (app/access.py). Times are UTC; a range is [from, to), widened to
whole buckets. Unique visitors and the top tables come from daily rollups, so they cover the
whole UTC days the range touches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app import access, sql
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


def _series(
    rows: list[dict[str, Any]], uniques: dict[Any, int] | None, start: datetime, end: datetime, unit: str
) -> list[dict[str, Any]]:
    """Every bucket of the range, empty ones included (a chart needs them)."""
    by_bucket = {r["bucket"]: r for r in rows}
    series = []
    bucket = start
    while bucket < end:
        row = by_bucket.get(bucket) or {"clicks": 0, "bots": 0}
        item = {
            "time": timestamp(bucket),
            "clicks": int(row["clicks"]),
            "humans": int(row["clicks"] - row["bots"]),
            "bots": int(row["bots"]),
        }
        if uniques is not None:
            item["unique_visitors"] = uniques.get(bucket.date(), 0)
        series.append(item)
        bucket += STEP[unit]
    return series


@bp.get("/urls/<id:url_id>/stats")
def link_stats(url_id: int) -> Response:
    unit = _granularity()
    start, end = _range(unit)
    top = _limit("top", 10, 100)
    link = visible_link(url_id)
    db = services().db
    # The daily tables cover the whole days the range touches.
    days = {"url_id": url_id, "start": _floor(start, "day"), "end": _ceil(end, "day")}
    rows = db.fetch_all(sql.STATS_SERIES, {"unit": unit, "url_id": url_id, "start": start, "end": end})
    uniques = {r["day"]: int(r["uniques"]) for r in db.fetch_all(sql.STATS_DAILY, days)}
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in DIMENSIONS.values()}
    for row in db.fetch_all(sql.STATS_DIMENSIONS, days):
        table = tables[DIMENSIONS[row["dimension"]]]
        if len(table) < top:
            table.append({"value": row["value"], "clicks": int(row["clicks"])})
    series = _series(rows, uniques if unit == "day" else None, start, end, unit)
    clicks = sum(b["clicks"] for b in series)
    bots = sum(b["bots"] for b in series)
    return jsonify(
        {
            "url_id": url_id,
            "short_code": link["short_code"],
            "from": timestamp(start),
            "to": timestamp(end),
            "granularity": unit,
            "total_clicks": clicks,
            "humans": clicks - bots,
            "bots": bots,
            "unique_visitors": sum(uniques.values()),
            "series": series,
            **tables,
        }
    )


@bp.get("/stats/top")
def top_links() -> Response:
    start, end = _range("day")
    limit = _limit("limit", 10, 1000)
    params = {"start": start, "end": end, "owner_id": access.owner_filter(), "limit": limit}
    rows = services().db.fetch_all(sql.STATS_TOP, params)
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
