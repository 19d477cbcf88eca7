"""GET /openapi.json: the API described from the same pydantic models that validate it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic.json_schema import models_json_schema

from app import schemas

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    models = [
        (schemas.UserIn, "validation"),
        (schemas.UserUpdate, "validation"),
        (schemas.UrlIn, "validation"),
        (schemas.UrlUpdate, "validation"),
        (schemas.EventIn, "validation"),
        (schemas.User, "serialization"),
        (schemas.Url, "serialization"),
        (schemas.Event, "serialization"),
        (schemas.Error, "serialization"),
        (schemas.BulkResult, "serialization"),
        (schemas.KeyIn, "validation"),
        (schemas.ApiKey, "serialization"),
        (schemas.ApiKeyCreated, "serialization"),
        (schemas.LinkStats, "serialization"),
        (schemas.TopLinks, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=_REF)
    return top.get("$defs", {})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Body or query is malformed",
        401: "Keys profile: no API key, or an unknown, revoked or malformed one",
        403: "Keys profile: the key may not do this (admin-only, or another user)",
        404: "Not found",
        409: "Conflict",
        422: "Validation failed",
        429: "Keys profile: too many requests from this key or address (see Retry-After)",
        503: "Database unavailable",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


# The keys profile's requirements (the rules themselves live in app/access.py). In the open
# profile no operation needs a key. Anyone may call these:
PUBLIC_OPERATIONS = {("/health", "get"), ("/{short_code}", "get"), ("/metrics", "get")}
# With a key or without (an anonymous link):
KEY_OPTIONAL_OPERATIONS = {("/urls", "post")}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, shk_ followed by 40 letters and digits (keys profile only).",
    }
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Adds each operation's security requirement and the answers of the keys profile."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if (path, method) in PUBLIC_OPERATIONS:
                operation["security"] = []
                continue
            if (path, method) in KEY_OPTIONAL_OPERATIONS:
                operation["security"] = [{}, {"bearerAuth": []}]
            operation["responses"].update(_errors(401, 403, 429))
    return paths


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


PAGING = [
    _query("page", {"type": "integer", "minimum": 1}),
    _query("per_page", {"type": "integer", "minimum": 1}),
]
ID = {"type": "integer", "minimum": 1}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _health_path() -> dict[str, Any]:
    return {
        "/health": {
            "get": {
                "summary": "Service and dependency state",
                "responses": {
                    "200": _json({"type": "object"}, "Healthy"),
                    "503": _json({"type": "object"}, "Database unreachable"),
                },
            }
        },
    }


def _user_paths() -> dict[str, Any]:
    """Users: the list, one, bulk import."""
    return {
        "/users": {
            "get": {
                "parameters": PAGING,
                "responses": {"200": _json(_array("User"), "Users by id"), **_errors(400)},
            },
            "post": {
                "requestBody": _body("UserIn"),
                "responses": {"201": _json(_ref("User"), "Created"), **_errors(400, 409, 422)},
            },
        },
        "/users/bulk": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"file": {"type": "string", "format": "binary"}},
                                "required": ["file"],
                            }
                        }
                    },
                },
                "responses": {"201": _json(_ref("BulkResult"), "Imported"), **_errors(400, 422)},
            }
        },
        "/users/{user_id}": {
            "parameters": [_path("user_id", ID)],
            "get": {"responses": {"200": _json(_ref("User"), "The user"), **_errors(404)}},
            "put": {
                "requestBody": _body("UserUpdate"),
                "responses": {"200": _json(_ref("User"), "Updated"), **_errors(400, 404, 409, 422)},
            },
            "delete": {"responses": {"204": {"description": "Deleted"}, **_errors(404)}},
        },
    }


def _url_paths() -> dict[str, Any]:
    """Links."""
    return {
        "/urls": {
            "get": {
                "parameters": [
                    _query("user_id", ID),
                    _query("is_active", {"type": "string", "enum": ["true", "false", "1", "0"]}),
                    *PAGING,
                ],
                "responses": {"200": _json(_array("Url"), "Links by id"), **_errors(400)},
            },
            "post": {
                "requestBody": _body("UrlIn"),
                "responses": {"201": _json(_ref("Url"), "Created"), **_errors(400, 404, 409, 422)},
            },
        },
        "/urls/{url_id}": {
            "parameters": [_path("url_id", ID)],
            "get": {"responses": {"200": _json(_ref("Url"), "The link"), **_errors(404)}},
            "put": {
                "requestBody": _body("UrlUpdate"),
                "responses": {"200": _json(_ref("Url"), "Updated"), **_errors(400, 404, 422)},
            },
            "delete": {"responses": {"204": {"description": "Deleted"}, **_errors(404)}},
        },
    }


def _event_paths() -> dict[str, Any]:
    """Events (clicks are recorded by the redirect, not posted)."""
    return {
        "/events": {
            "get": {
                "parameters": [
                    _query("event_type", {"type": "string", "maxLength": 50}),
                    _query("url_id", ID),
                    _query("user_id", ID),
                    *PAGING,
                ],
                "responses": {"200": _json(_array("Event"), "Events by id"), **_errors(400)},
            },
            "post": {
                "requestBody": _body("EventIn"),
                "responses": {"201": _json(_ref("Event"), "Created"), **_errors(400, 404, 422)},
            },
        },
    }


def _public_paths() -> dict[str, Any]:
    """The redirect and the metrics."""
    return {
        "/{short_code}": {
            "get": {
                "parameters": [_path("short_code", {"type": "string"})],
                "responses": {
                    "302": {"description": "Redirect to the original URL (or 301/307/308)"},
                    **_errors(404),
                },
            }
        },
        "/metrics": {
            "get": {
                "description": "Keys profile: only the addresses in SHORTENER_METRICS_ALLOW and admin keys",
                "responses": {"200": {"description": "Prometheus text format"}, **_errors(404)},
            }
        },
    }


def _key_paths() -> dict[str, Any]:
    """API keys."""
    return {
        "/keys": {
            "get": {
                "summary": "API keys: all for an admin key, its user's own for a user's key; never the secrets",
                "parameters": PAGING,
                "responses": {"200": _json(_array("ApiKey"), "Keys by id"), **_errors(400)},
            },
            "post": {
                "summary": "Create a key; the answer is the only place the key itself is ever shown",
                "requestBody": _body("KeyIn"),
                "responses": {"201": _json(_ref("ApiKeyCreated"), "Created"), **_errors(400, 404, 422)},
            },
        },
        "/keys/{key_id}": {
            "parameters": [_path("key_id", ID)],
            "get": {"responses": {"200": _json(_ref("ApiKey"), "The key, without its secret"), **_errors(404)}},
            "delete": {
                "summary": "Revoke the key (at once, on every instance)",
                "responses": {"204": {"description": "Revoked"}, **_errors(404)},
            },
        },
    }


def _stats_paths() -> dict[str, Any]:
    """Statistics (docs/analytics.md): the owner's key or an admin key."""
    moment = {"type": "string", "description": "ISO 8601 date or date-time; UTC unless it names an offset"}
    return {
        "/urls/{url_id}/stats": {
            "parameters": [_path("url_id", ID)],
            "get": {
                "summary": "A link's clicks, humans, bots, unique visitors, time series and top tables",
                "description": (
                    "Totals and the series have hour resolution. Unique visitors and the top tables"
                    " (referrers, browsers, operating systems, devices) are kept per UTC day only, even"
                    " with granularity=hour: they cover every whole UTC day the range touches, and a"
                    " range's unique visitors are the sum of its days' (a visitor id lasts one day)."
                ),
                "parameters": [
                    _query("from", moment),
                    _query("to", moment),
                    _query("granularity", {"type": "string", "enum": ["hour", "day"], "default": "day"}),
                    _query("top", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
                ],
                "responses": {"200": _json(_ref("LinkStats"), "The link's statistics"), **_errors(400, 404)},
            },
        },
        "/urls/{url_id}/clicks.csv": {
            "parameters": [_path("url_id", ID)],
            "get": {
                "summary": "The link's raw clicks as CSV, streamed (oldest first; within the raw-click retention)",
                "responses": {"200": {"description": "text/csv"}, **_errors(404)},
            },
        },
        **{
            f"/urls/{{url_id}}/qr.{kind}": {
                "parameters": [_path("url_id", ID)],
                "get": {
                    "summary": "QR code of the short URL",
                    "responses": {"200": {"description": f"image/{mime}"}, **_errors(404)},
                },
            }
            for kind, mime in (("svg", "svg+xml"), ("png", "png"))
        },
        "/stats/top": {
            "get": {
                "summary": "The most-followed links (an admin key: all; a user's key: its own)",
                "description": "Counted per UTC day: the range covers every whole UTC day it touches.",
                "parameters": [
                    _query("from", moment),
                    _query("to", moment),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}),
                ],
                "responses": {"200": _json(_ref("TopLinks"), "Links by clicks, most first"), **_errors(400)},
            },
        },
    }


def spec() -> dict[str, Any]:
    # Merged in the contract's order: the spec's JSON lists the paths so.
    paths = {
        **_health_path(),
        **_user_paths(),
        **_url_paths(),
        **_event_paths(),
        **_public_paths(),
        **_key_paths(),
        **_stats_paths(),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "shortener", "version": "1.0.0"},
        "paths": _secured(paths),
        "security": [{"bearerAuth": []}],
        "components": {"schemas": _schemas(), "securitySchemes": SECURITY_SCHEMES},
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(spec())
