"""Query-string parameters: paging and filters. A bad value is a 400 that names it."""

from __future__ import annotations

from flask import request

from app.errors import ApiError
from app.schemas import storable
from app.services import services

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def int_param(name: str, minimum: int = 1) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 19:
        raise ApiError(400, f"Query parameter '{name}' must be an integer", {name: "not an integer"})
    value = int(raw)
    if value < minimum:
        raise ApiError(400, f"Query parameter '{name}' must be at least {minimum}", {name: "too small"})
    return value


def bool_param(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(400, f"Query parameter '{name}' must be true or false", {name: "not a boolean"})


def str_param(name: str, max_length: int) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if len(raw) > max_length:
        raise ApiError(400, f"Query parameter '{name}' is too long", {name: "too long"})
    try:
        return storable(raw)
    except ValueError as exc:
        raise ApiError(400, f"Query parameter '{name}' {exc}", {name: str(exc)}) from exc


def paging() -> tuple[int, int]:
    """(limit, offset). Without paging parameters: the first ``list_default_limit`` rows.

    ``per_page`` above the maximum is lowered to it rather than refused: a client asking for
    "everything" still gets a useful answer, and can page for the rest.
    """
    settings = services().settings
    page = int_param("page")
    per_page = int_param("per_page")
    if page is None and per_page is None:
        return settings.list_default_limit, 0
    per_page = min(per_page or settings.per_page_default, settings.per_page_max)
    page = page or 1
    return per_page, (page - 1) * per_page
