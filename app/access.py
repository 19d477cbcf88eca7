"""Who is calling and what they may do: the one home of the access rules.

``register`` installs one hook that runs before every view. In the ``open`` profile it lets
everything through as the contract describes. In the ``keys`` profile it authenticates the
``Authorization: Bearer`` key once, refuses what the caller may not reach at all (401, 403,
404 for /metrics), and leaves a :class:`Caller` in ``flask.g``. The views then ask this module
for the ownership rules: :func:`owner_filter` for listings, :func:`visible` for a loaded row,
:func:`require_user` for /users/<id>, :func:`owner_of_new` and :func:`key_owner` for creation.

The redirect never gets here with any work to do: it is public, and the hook returns at its
first test (and a cached redirect is answered by the Nginx edge without reaching an instance).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, Response, g, request

from app import keys, sql
from app.addresses import client_address
from app.errors import ApiError, error_response
from app.services import services

log = logging.getLogger(__name__)

# Endpoints anyone may call: the redirect, the health check, the web page and its form, the
# API description. Every endpoint not named here needs a key: a new route is closed until
# someone opens it here.
PUBLIC = frozenset(
    {"redirect.follow", "health.health", "web.index", "web.shorten", "web.stats_page", "openapi.openapi", "static"}
)
# Anyone may call it; a key, when sent, is checked and decides whose link it is.
KEY_OPTIONAL = frozenset({"urls.create_url"})
# Only admin keys; a user's key gets 403.
ADMIN_ONLY = frozenset({"users.list_users", "users.create_user", "users.bulk_users"})
METRICS = "metrics.metrics_endpoint"

# last_used_at is written at most this often per key and process (plus a guard in the
# UPDATE itself), so a busy key costs no write per request.
TOUCH_EVERY_SECONDS = 60.0

Kind = Literal["open", "anonymous", "user", "admin"]


@dataclass(frozen=True)
class Caller:
    kind: Kind
    key_id: int | None = None
    user_id: int | None = None
    prefix: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("open", "admin")


OPEN = Caller("open")
ANONYMOUS = Caller("anonymous")


class Unauthorized(ApiError):
    """401 with the ``WWW-Authenticate`` challenge (RFC 6750)."""

    def __init__(self, message: str, invalid: bool) -> None:
        super().__init__(401, message)
        self.challenge = 'Bearer realm="shortener"' + (', error="invalid_token"' if invalid else "")


_touch_lock = threading.Lock()


def current() -> Caller:
    caller = g.get("caller")
    if caller is not None:
        return caller
    return OPEN if services().settings.access_profile == "open" else ANONYMOUS


def address() -> str | None:
    """The client's address (app/addresses.py decides whom to believe)."""
    return client_address(request.remote_addr, request.headers.get("X-Real-IP"), services().trusted_proxies)


def _touch(key_id: int) -> None:
    svc = services()
    now = time.monotonic()
    with _touch_lock:
        if now - svc.key_touches.get(key_id, float("-inf")) < TOUCH_EVERY_SECONDS:
            return
        svc.key_touches[key_id] = now
    svc.db.execute(sql.TOUCH_KEY, (key_id,))


def _authenticate(header: str) -> Caller:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    # Nothing of the header goes into the answer or a log line: it may be a key.
    if scheme.lower() != "bearer" or not keys.is_well_formed(token):
        raise Unauthorized("Malformed Authorization header: send 'Bearer <api key>'", invalid=True)
    row = keys.find(services().db, token)
    if row is None or row["revoked_at"] is not None:
        raise Unauthorized("Unknown or revoked API key", invalid=True)
    _touch(row["id"])
    kind: Kind = "admin" if row["is_admin"] else "user"
    return Caller(kind, key_id=row["id"], user_id=row["user_id"], prefix=row["prefix"])


def _check() -> None:
    endpoint = request.endpoint
    if endpoint in PUBLIC or endpoint is None:  # None: no route matched, a 404/405 follows
        return
    svc = services()
    if svc.settings.access_profile == "open":
        g.caller = OPEN
        return
    header = request.headers.get("Authorization")
    caller = _authenticate(header) if header is not None else None
    if endpoint == METRICS:
        if (caller is None or not caller.is_admin) and not svc.metrics_allow.contains(address()):
            raise ApiError(404, "Not found")
        g.caller = caller or ANONYMOUS
        return
    if caller is None:
        if endpoint in KEY_OPTIONAL:
            g.caller = ANONYMOUS
            return
        raise Unauthorized("An API key is required: send 'Authorization: Bearer <api key>'", invalid=False)
    if endpoint in ADMIN_ONLY and not caller.is_admin:
        raise ApiError(403, "This needs an admin key")
    g.caller = caller


def register(app: Flask) -> None:
    app.before_request(_check)

    @app.errorhandler(Unauthorized)
    def _unauthorized(exc: Unauthorized) -> Response:
        response = error_response(401, exc.message)
        response.headers["WWW-Authenticate"] = exc.challenge
        return response


# --- ownership: the rules the views apply ---------------------------------------------------


def owner_filter() -> int | None:
    """The user id every listing must be limited to, or None for an admin (no limit)."""
    caller = current()
    return None if caller.is_admin else caller.user_id


def owns(user_id: int | None) -> bool:
    caller = current()
    return caller.is_admin or (caller.kind == "user" and user_id == caller.user_id)


def visible(row: dict[str, Any] | None, message: str, details: dict[str, str] | None = None) -> dict[str, Any]:
    """The row when it exists and the caller may see it; otherwise the same 404 either way, so
    that a user's key cannot tell another user's row from a missing one."""
    if row is None or not owns(row["user_id"]):
        raise ApiError(404, message, details)
    return row


def require_user(user_id: int) -> None:
    """/users/<id>: a user's key reaches its own user only; any other id is 403."""
    if not owns(user_id):
        raise ApiError(403, "A user's key can only reach its own user")


def owner_of_new(requested: int | None) -> int | None:
    """Whose a new link or event is: the requested user for an admin, the key's user for a
    user's key (another user's id is a 404, as if it did not exist), nobody for an anonymous
    caller (POST /urls only, when anonymous links are allowed)."""
    caller = current()
    if caller.is_admin:
        return requested
    if caller.kind == "user":
        if requested is not None and requested != caller.user_id:
            raise ApiError(404, "User not found", {"user_id": "no such user"})
        return caller.user_id
    if requested is not None:
        raise Unauthorized("Creating a link for a user needs that user's key or an admin key", invalid=False)
    if not services().settings.anonymous_create:
        raise Unauthorized("Anonymous links are switched off: send an API key", invalid=False)
    return None


def key_owner(admin: bool, user_id: int | None) -> tuple[bool, int | None]:
    """(is_admin, user_id) of a key about to be made, checked against the caller."""
    caller = current()
    if not caller.is_admin:
        if admin:
            raise ApiError(403, "Only an admin key can create admin keys")
        if user_id is not None and user_id != caller.user_id:
            raise ApiError(403, "A user's key can only create keys for its own user")
        return False, caller.user_id
    if admin:
        if user_id is not None:
            raise ApiError(422, "Validation failed", {"user_id": "an admin key belongs to no user"})
        return True, None
    if user_id is None:
        raise ApiError(422, "Validation failed", {"user_id": "give user_id, or admin: true"})
    return False, user_id
