"""Errors as JSON, always: the contract allows no HTML error page and no stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import psycopg2
from flask import Flask, Response, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from app.cache import Unavailable as CacheUnavailable
from app.db import DatabaseUnavailable
from app.services import services

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, details: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    response = jsonify(body)
    response.status_code = status
    return response


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it.

    JSON is UTF-8 (RFC 8259): another declared charset is refused rather than guessed, and
    bytes are decoded as UTF-8 only (json.loads would also take UTF-16 and UTF-32).
    """
    if not request.is_json:
        raise ApiError(400, "Request body must be a JSON object sent as application/json")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(400, "A JSON body must be UTF-8", {"Content-Type": f"charset {charset[:40]!r} is not UTF-8"})
    raw = request.get_data(cache=False)
    max_depth = services().settings.json_max_depth
    try:
        body = json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        # The parser's own recursion limit (about 1000 levels): far past the cap anyway.
        raise _too_deep(max_depth) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    if json_depth(body, max_depth) > max_depth:
        raise _too_deep(max_depth)
    return body


def json_depth(value: Any, stop_after: int) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0, ``{}`` is 1), counted
    without recursion; stops looking once ``stop_after`` is passed."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_after:
            break
        stack.extend((child, depth) for child in item)
    return deepest


def _too_deep(max_depth: int) -> ApiError:
    # 422: the body is JSON and an object, but not one the service will process (the
    # recursive validators and PostgreSQL's jsonb would otherwise meet the nesting).
    reason = f"nested deeper than {max_depth} levels"
    return ApiError(422, f"Request body is {reason}", {"body": reason})


def validate(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details: dict[str, str] = {}
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "body"
            message = err["msg"].removeprefix("Value error, ")
            details.setdefault(field, message)
        raise ApiError(422, "Validation failed", details) from exc


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "Not found",
            405: "Method not allowed",
            413: "Request body too large",
            415: "Unsupported media type",
        }
        response = error_response(status, messages.get(status, exc.name))
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> Response:
        log.error("database unavailable", extra={"error": str(exc)})
        response = error_response(503, "Database unavailable, try again shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(psycopg2.DataError)
    def _data_error(exc: psycopg2.DataError) -> Response:
        # Validation should have caught it; the database's own refusal is still the client's value.
        log.warning("database refused a value", extra={"error": str(exc).strip()})
        return error_response(422, "A value could not be stored")

    @app.errorhandler(CacheUnavailable)
    def _cache_down(exc: CacheUnavailable) -> Response:  # pragma: no cover - callers handle it
        log.error("cache unavailable where it was required", extra={"error": str(exc)})
        return error_response(503, "Service temporarily unavailable")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "Internal server error")
