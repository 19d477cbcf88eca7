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
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    if not request.is_json:
        raise ApiError(400, "Request body must be a JSON object sent as application/json")
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


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
