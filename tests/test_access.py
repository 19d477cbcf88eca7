"""The keys profile: who may call what (one table), ownership scoping, the key lifecycle,
/metrics, and that no key ever reaches a log line or an answer."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest

from app import access, keys
from tests.conftest import keyed_client

CALLERS = ("anonymous", "user", "other", "admin", "revoked")


@dataclass
class World:
    """User A (with a key, a link and its event), user B (another user's key), an admin key
    and a revoked key of A. ``other`` is B acting on A's things."""

    app: Any
    db: Any
    user_a: int
    user_b: int
    url_a: dict[str, Any]
    key_a: str
    key_a_id: int
    key_b: str
    admin: str
    revoked: str
    serial: Any

    def client(self, who: str) -> Any:
        key = {"user": self.key_a, "other": self.key_b, "admin": self.admin, "revoked": self.revoked}.get(who)
        return keyed_client(self.app, key) if key else self.app.test_client()

    def new_user(self) -> int:
        n = next(self.serial)
        row = self.db.fetch_one(
            "INSERT INTO users (username, email) VALUES (%s, %s) RETURNING id", (f"u{n}", f"u{n}@example.com")
        )
        return row["id"]

    def new_url(self) -> int:
        code = f"c{next(self.serial)}x"
        row = self.db.fetch_one(
            "INSERT INTO urls (user_id, short_code, original_url) VALUES (%s, %s, 'https://example.com') RETURNING id",
            (self.user_a, code),
        )
        return row["id"]

    def new_key_a(self) -> int:
        return keys.create(self.db, user_id=self.user_a, is_admin=False, name="spare")[1]["id"]


@pytest.fixture
def world(app_factory: Callable[..., Any]) -> World:
    app = app_factory(access_profile="keys")
    db = app.extensions["shortener"].db
    serial = count(1)
    admin, _ = keys.create(db, user_id=None, is_admin=True, name="admin")
    w = World(app, db, 0, 0, {}, "", 0, "", admin, "", serial)
    w.user_a, w.user_b = w.new_user(), w.new_user()
    w.key_a, row_a = keys.create(db, user_id=w.user_a, is_admin=False, name="a")
    w.key_a_id = row_a["id"]
    w.key_b, _ = keys.create(db, user_id=w.user_b, is_admin=False, name="b")
    w.revoked, row_r = keys.create(db, user_id=w.user_a, is_admin=False, name="old")
    keys.revoke(db, row_r["id"])
    admin_client = w.client("admin")
    w.url_a = admin_client.post("/urls", json={"original_url": "https://example.com/a", "user_id": w.user_a}).get_json()
    admin_client.post("/events", json={"event_type": "note", "url_id": w.url_a["id"]})
    return w


def _csv() -> dict[str, Any]:
    return {"file": (io.BytesIO(b"username,email\nbulk,bulk@example.com\n"), "u.csv")}


# (method, path, body) -> expected status for anonymous, user (A), other (B on A's things),
# admin, revoked key. A callable path or body is called with the world once per request.
MATRIX: list[tuple[str, Any, Any, tuple[int, int, int, int, int]]] = [
    ("GET", "/health", None, (200, 200, 200, 200, 200)),
    ("GET", "/openapi.json", None, (200, 200, 200, 200, 200)),
    ("GET", "/", None, (200, 200, 200, 200, 200)),
    ("GET", lambda w: f"/{w.url_a['short_code']}", None, (302, 302, 302, 302, 302)),
    ("POST", "/urls", {"original_url": "https://example.com/n"}, (201, 201, 201, 201, 401)),
    ("POST", "/urls", lambda w: {"original_url": "https://e.com", "user_id": w.user_a}, (401, 201, 404, 201, 401)),
    ("GET", "/urls", None, (401, 200, 200, 200, 401)),
    ("GET", lambda w: f"/urls/{w.url_a['id']}", None, (401, 200, 404, 200, 401)),
    ("PUT", lambda w: f"/urls/{w.url_a['id']}", {"title": "t"}, (401, 200, 404, 200, 401)),
    ("DELETE", lambda w: f"/urls/{w.new_url()}", None, (401, 204, 404, 204, 401)),
    ("GET", "/users", None, (401, 403, 403, 200, 401)),
    (
        "POST",
        "/users",
        lambda w: {"username": "n", "email": f"n{next(w.serial)}@example.com"},
        (401, 403, 403, 201, 401),
    ),
    ("POST", "/users/bulk", lambda w: _csv(), (401, 403, 403, 201, 401)),
    ("GET", lambda w: f"/users/{w.user_a}", None, (401, 200, 403, 200, 401)),
    ("PUT", lambda w: f"/users/{w.user_a}", {"username": "renamed"}, (401, 200, 403, 200, 401)),
    ("DELETE", lambda w: f"/users/{w.new_user()}", None, (401, 403, 403, 204, 401)),
    ("GET", "/events", None, (401, 200, 200, 200, 401)),
    ("POST", "/events", lambda w: {"event_type": "x", "url_id": w.url_a["id"]}, (401, 201, 404, 201, 401)),
    ("POST", "/keys", lambda w: {"user_id": w.user_a}, (401, 201, 403, 201, 401)),
    ("POST", "/keys", {"admin": True}, (401, 403, 403, 201, 401)),
    ("GET", "/keys", None, (401, 200, 200, 200, 401)),
    ("GET", lambda w: f"/keys/{w.key_a_id}", None, (401, 200, 404, 200, 401)),
    ("DELETE", lambda w: f"/keys/{w.new_key_a()}", None, (401, 204, 404, 204, 401)),
    ("GET", lambda w: f"/urls/{w.url_a['id']}/stats", None, (401, 200, 404, 200, 401)),
    ("GET", "/stats/top", None, (401, 200, 200, 200, 401)),  # B sees its own (none)
    ("GET", lambda w: f"/urls/{w.url_a['id']}/clicks.csv", None, (401, 200, 404, 200, 401)),
    ("GET", lambda w: f"/urls/{w.url_a['id']}/qr.svg", None, (401, 200, 404, 200, 401)),
    ("GET", lambda w: f"/urls/{w.url_a['id']}/qr.png", None, (401, 200, 404, 200, 401)),
    ("GET", "/metrics", None, (200, 200, 200, 200, 401)),  # from 127.0.0.1: metrics_allow
    ("GET", "/nothing/here", None, (404, 404, 404, 404, 404)),
]


def test_access_matrix(world: World) -> None:
    wrong = []
    for method, path, body, statuses in MATRIX:
        for who, expected in zip(CALLERS, statuses, strict=True):
            url = path(world) if callable(path) else path
            data = body(world) if callable(body) else body
            kwargs: dict[str, Any] = {}
            if isinstance(data, dict) and "file" in data:
                kwargs["data"], kwargs["content_type"] = data, "multipart/form-data"
            elif data is not None:
                kwargs["json"] = data
            response = world.client(who).open(url, method=method, **kwargs)
            if response.status_code != expected:
                wrong.append((method, url, who, expected, response.status_code, response.get_data(as_text=True)[:120]))
            if response.status_code >= 400 and url != "/nothing/here":
                assert response.is_json, (method, url, who)
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not wrong, "\n".join(map(str, wrong))


def test_a_users_key_sees_only_its_own_rows(world: World) -> None:
    admin, a, b = world.client("admin"), world.client("user"), world.client("other")
    url_b = b.post("/urls", json={"original_url": "https://example.com/b"}).get_json()
    assert url_b["user_id"] == world.user_b  # a user's key makes its user's links
    anonymous = world.client("anonymous").post("/urls", json={"original_url": "https://example.com/x"})
    assert anonymous.get_json()["user_id"] is None

    assert [u["id"] for u in a.get("/urls").get_json()] == [world.url_a["id"]]
    assert a.get(f"/urls?user_id={world.user_b}").get_json() == []
    assert {u["id"] for u in admin.get("/urls").get_json()} >= {world.url_a["id"], url_b["id"]}

    b.get(f"/{url_b['short_code']}")  # a click of B's link
    events_a = a.get("/events").get_json()
    assert events_a and all(e["url_id"] == world.url_a["id"] or e["user_id"] == world.user_a for e in events_a)
    assert all(e["url_id"] == url_b["id"] for e in b.get("/events").get_json())
    assert a.get(f"/events?url_id={url_b['id']}").get_json() == []

    assert {k["user_id"] for k in a.get("/keys").get_json()} == {world.user_a}
    assert any(k["admin"] for k in admin.get("/keys").get_json())
    # Another user's id in a new link or event: as if that user did not exist.
    assert a.post("/events", json={"event_type": "x", "user_id": world.user_b}).status_code == 404
    assert a.post("/keys", json={"user_id": world.user_b}).status_code == 403


def test_key_lifecycle(
    world: World, sql: Callable[..., list[tuple[Any, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = world.client("admin")
    created = admin.post("/keys", json={"user_id": world.user_a, "name": "laptop"})
    assert created.status_code == 201
    body = created.get_json()
    secret = body["key"]
    assert keys.is_well_formed(secret) and body["prefix"] == secret[:12]
    assert created.headers["Cache-Control"] == "no-store"
    assert body["last_used_at"] is None and body["revoked_at"] is None
    # Stored as its SHA-256 only.
    assert sql("SELECT key_hash FROM api_keys WHERE id = %s", (body["id"],)) == [(keys.key_hash(secret),)]
    assert secret not in repr(sql("SELECT * FROM api_keys"))
    # Never shown again.
    listed = admin.get(f"/keys/{body['id']}").get_json()
    assert "key" not in listed and secret not in str(admin.get("/keys").get_json())

    mine = keyed_client(world.app, secret)
    assert mine.get(f"/users/{world.user_a}").status_code == 200
    first_use = admin.get(f"/keys/{body['id']}").get_json()["last_used_at"]
    assert first_use is not None
    # Used again a while later: the time moves (the once-a-minute throttle made 0 here).
    monkeypatch.setattr(access, "TOUCH_EVERY_SECONDS", 0.0)
    sql("UPDATE api_keys SET last_used_at = last_used_at - interval '2 hours' WHERE id = %s", (body["id"],))
    before = admin.get(f"/keys/{body['id']}").get_json()["last_used_at"]
    assert mine.get(f"/users/{world.user_a}").status_code == 200
    assert admin.get(f"/keys/{body['id']}").get_json()["last_used_at"] > before

    # Revoked: refused at once, here and on another instance of the service.
    assert admin.delete(f"/keys/{body['id']}").status_code == 204
    assert mine.get(f"/users/{world.user_a}").status_code == 401
    assert admin.get(f"/keys/{body['id']}").get_json()["revoked_at"] is not None
    assert admin.delete(f"/keys/{body['id']}").status_code == 204  # revoking again changes nothing


def test_revocation_reaches_every_instance_at_once(world: World, app_factory: Callable[..., Any]) -> None:
    second = app_factory(access_profile="keys")
    on_second = keyed_client(second, world.key_a)
    assert on_second.get(f"/users/{world.user_a}").status_code == 200
    assert world.client("user").delete(f"/keys/{world.key_a_id}").status_code == 204  # a key revokes itself
    assert on_second.get(f"/users/{world.user_a}").status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer shk_" + "A" * 40,  # well formed, unknown
        "Bearer shk_short",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "shk_" + "B" * 40,
        "Bearer shk_" + "C" * 40 + " trailing",
    ],
)
def test_bad_keys_are_401_and_never_echoed(world: World, header: str) -> None:
    response = world.app.test_client().get("/urls", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    text = response.get_data(as_text=True)
    assert response.is_json and "error" in response.get_json()
    token = header.split(" ")[-1]
    if token.startswith("shk_"):
        assert token not in text


def test_keys_never_reach_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = "shk_" + "Z" * 40
    world.client("user").get("/urls")
    world.client("admin").post("/keys", json={"user_id": world.user_a})
    world.app.test_client().get("/urls", headers={"Authorization": f"Bearer {bad}"})
    world.app.test_client().get("/urls", headers={"Authorization": f"Bearer {bad}x"})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "shortener.access" in {r.name for r in caplog.records}  # the access lines were written
    for secret in (world.key_a, world.admin, bad):
        assert secret not in text
        assert secret[4:] not in text


def test_metrics_answer_only_allowed_addresses_and_admin_keys(world: World, app_factory: Callable[..., Any]) -> None:
    far = {"REMOTE_ADDR": "203.0.113.9"}
    assert world.app.test_client().get("/metrics", environ_base=far).status_code == 404
    assert world.client("user").get("/metrics", environ_base=far).status_code == 404
    answer = world.client("admin").get("/metrics", environ_base=far)
    assert answer.status_code == 200 and b"shortener_http_requests_total" in answer.data
    # X-Real-IP is believed only from a trusted proxy (loopback here).
    proxied = {"REMOTE_ADDR": "127.0.0.1"}
    spoofed = world.app.test_client().get("/metrics", environ_base=proxied, headers={"X-Real-IP": "198.51.100.7"})
    assert spoofed.status_code == 404
    direct = world.app.test_client().get("/metrics", environ_base=far, headers={"X-Real-IP": "127.0.0.1"})
    assert direct.status_code == 404
    monitor = app_factory(access_profile="keys", metrics_allow="198.51.100.0/24")
    got = monitor.test_client().get("/metrics", environ_base=proxied, headers={"X-Real-IP": "198.51.100.7"})
    assert got.status_code == 200


def test_anonymous_creation_can_be_switched_off(app_factory: Callable[..., Any]) -> None:
    app = app_factory(access_profile="keys", anonymous_create=False)
    client = app.test_client()
    response = client.post("/urls", json={"original_url": "https://example.com"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/", data={"original_url": "https://example.com"}).status_code == 403
    assert client.get("/").status_code == 200


def test_open_profile_needs_no_key(app_factory: Callable[..., Any]) -> None:
    client = app_factory(access_profile="open").test_client()
    assert client.get("/users").status_code == 200
    made = client.post("/keys", json={"admin": True})
    assert made.status_code == 201 and keys.is_well_formed(made.get_json()["key"])
    assert client.get("/keys").status_code == 200


def test_the_default_profile_is_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    monkeypatch.delenv("SHORTENER_ACCESS_PROFILE", raising=False)
    assert Settings().access_profile == "keys"
    with pytest.raises(ValueError, match="not an address"):
        Settings(metrics_allow="10.0.0.0/8,nonsense")
    with pytest.raises(ValueError):
        Settings(rate_limit_read="lots")


def test_ids_beyond_bigint_are_404_before_any_view(world: World) -> None:
    admin = world.client("admin")
    paths = {"GET": ("/urls/", "/users/", "/keys/"), "PUT": ("/urls/", "/users/"), "DELETE": ("/urls/", "/keys/")}
    for method, prefixes in paths.items():
        for path in [p + n for p in prefixes for n in (str(2**63), str(2**70), "0")]:
            response = admin.open(path, method=method, json={"title": "x"})
            assert response.status_code == 404, (method, path)
            assert response.is_json


def test_last_used_is_written_once_a_minute_at_most(world: World, sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    client = world.client("other")
    client.get("/urls")
    first = sql("SELECT last_used_at FROM api_keys WHERE user_id = %s", (world.user_b,))[0][0]
    time.sleep(0.01)
    for _ in range(5):
        client.get("/urls")
    assert sql("SELECT last_used_at FROM api_keys WHERE user_id = %s", (world.user_b,))[0][0] == first


def test_the_log_line_names_the_client_the_trusted_proxy_reports(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shortener.access")
    code = world.url_a["short_code"]
    client = world.app.test_client()
    client.get(f"/{code}")  # fills the cache: the next ones take the fast path
    cases = [
        ({"REMOTE_ADDR": "127.0.0.1"}, "198.51.100.4", "198.51.100.4"),  # our Nginx
        ({"REMOTE_ADDR": "203.0.113.5"}, "198.51.100.4", "203.0.113.5"),  # anyone else: ignored
    ]
    for environ, real_ip, expected in cases:
        for path in (f"/{code}", "/health"):  # fast path and Flask
            caplog.clear()
            client.get(path, environ_base=environ, headers={"X-Real-IP": real_ip})
            lines = [r for r in caplog.records if r.name == "shortener.access"]
            assert [r.remote_addr for r in lines] == [expected], path  # type: ignore[attr-defined]
