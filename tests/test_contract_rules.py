"""The contract's numbered rules, one named test (or more) each."""

from __future__ import annotations

import pytest

from app.cache import KEY_PREFIX


@pytest.fixture
def client(contract_client):
    """Each test runs in the open profile and in the keys profile with an admin key."""
    return contract_client


def test_rule_1_same_url_twice_gets_two_codes(client):
    first = client.post("/urls", json={"original_url": "https://example.com/same"})
    second = client.post("/urls", json={"original_url": "https://example.com/same"})
    assert first.status_code == second.status_code == 201
    assert first.get_json()["short_code"] != second.get_json()["short_code"]


def test_rule_2_every_redirect_is_a_click_cached_or_not(client, make_url, sql, redis):
    url = make_url()
    client.get(f"/{url['short_code']}")  # database, fills the cache
    client.get(f"/{url['short_code']}")  # cache
    redis.delete(KEY_PREFIX + url["short_code"])
    client.get(f"/{url['short_code']}")  # database again
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 3


def test_rule_2_inactive_deleted_unknown_record_nothing(client, make_url, sql):
    inactive, deleted = make_url(), make_url()
    client.put(f"/urls/{inactive['id']}", json={"is_active": False})
    client.delete(f"/urls/{deleted['id']}")
    for code in (inactive["short_code"], deleted["short_code"], "nothere"):
        for _ in range(2):
            assert client.get(f"/{code}").status_code == 404
    client.get("/events")  # drains the queue
    assert sql("SELECT count(*) FROM events WHERE event_type = 'click'")[0][0] == 0


def test_rule_3_strangers_are_404(client, make_url):
    url = make_url()
    assert client.post("/urls", json={"original_url": "https://e.com", "user_id": 77777}).status_code == 404
    assert client.post("/events", json={"event_type": "x", "url_id": 77777}).status_code == 404
    assert client.post("/events", json={"event_type": "x", "user_id": 77777}).status_code == 404
    assert client.get("/users/77777").status_code == 404
    assert client.get("/urls/77777").status_code == 404
    # A deleted url is a stranger too.
    client.delete(f"/urls/{url['id']}")
    assert client.post("/events", json={"event_type": "x", "url_id": url["id"]}).status_code == 404


def test_rule_4_deactivated_is_404_and_reactivation_redirects_on_every_instance(app_factory, make_url):
    one, two = app_factory().test_client(), app_factory().test_client()
    url = make_url()
    code = url["short_code"]
    assert one.get(f"/{code}").status_code == 302 and two.get(f"/{code}").status_code == 302  # both cached
    one.put(f"/urls/{url['id']}", json={"is_active": False})
    assert two.get(f"/{code}").status_code == 404
    assert one.get(f"/{code}").status_code == 404
    two.put(f"/urls/{url['id']}", json={"is_active": True})
    assert one.get(f"/{code}").status_code == 302
    assert two.get(f"/{code}").status_code == 302


def test_rule_4_changed_target_is_seen_by_every_instance_at_once(app_factory, make_url):
    one, two = app_factory().test_client(), app_factory().test_client()
    url = make_url()
    two.get(f"/{url['short_code']}")
    one.put(f"/urls/{url['id']}", json={"original_url": "https://example.com/moved"})
    assert two.get(f"/{url['short_code']}").headers["Location"] == "https://example.com/moved"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/users", {"username": 1, "email": "a@b.co"}),
        ("/users", {"username": "a", "email": 2}),
        ("/urls", {"original_url": "https://e.com", "user_id": "5"}),
        ("/urls", {"original_url": "https://e.com", "user_id": True}),
        ("/urls", {"original_url": "word"}),
        ("/urls", {"original_url": 3.14}),
        ("/urls", {"original_url": "https://e.com", "title": {"a": 1}}),
        ("/events", {"event_type": "x", "details": ["list"]}),
        ("/events", {"event_type": True}),
        ("/events", {"event_type": "x", "url_id": False}),
    ],
)
def test_rule_5_wrong_types_are_422(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert "error" in response.get_json()


@pytest.mark.parametrize("path", ["/users", "/urls", "/events"])
@pytest.mark.parametrize(
    "data, content_type",
    [
        ('"a string"', "application/json"),
        ("[1, 2]", "application/json"),
        ("null", "application/json"),
        ("plain text", "text/plain"),
        ("username=a&email=b", "application/x-www-form-urlencoded"),
        ('{"username": "a"}', "text/plain"),
        ('{"unclosed": ', "application/json"),
        ("\xff\xfe", "application/json"),
        ("", "application/json"),
    ],
)
def test_rule_6_body_not_a_json_object_is_400(client, path, data, content_type):
    response = client.post(path, data=data, content_type=content_type)
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_rule_6_applies_to_put_too(client, make_user, make_url):
    user, url = make_user(), make_url()
    for path in (f"/users/{user['id']}", f"/urls/{url['id']}"):
        assert client.put(path, data="[]", content_type="application/json").status_code == 400
        assert client.put(path, data="x", content_type="text/plain").status_code == 400


def test_rule_7_paging(client, sql):
    sql("INSERT INTO users (username, email) SELECT 'p' || g, 'p' || g || '@x.io' FROM generate_series(1, 30) g")
    assert len(client.get("/users").get_json()) == 30
    pages = [client.get(f"/users?page={p}&per_page=7").get_json() for p in range(1, 6)]
    ids = [u["id"] for page in pages for u in page]
    assert ids == list(range(1, 31))
    assert len(client.get("/users?page=1").get_json()) == 20  # per_page defaults to 20


def test_rule_8_starts_on_an_empty_database_and_serves_without_redis(stack, _schema):
    """Covered end to end in test_failures.py and test_gunicorn.py; here: no Redis configured."""
    from app import create_app
    from tests.conftest import make_settings, truncate

    truncate(stack)
    app = create_app(make_settings(stack, redis_url="", migrate_on_start=False))
    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["cache"] == "disabled"
    url = client.post("/urls", json={"original_url": "https://example.com/no-redis"}).get_json()
    assert client.get(f"/{url['short_code']}").status_code == 302
    assert len(client.get(f"/events?url_id={url['id']}&event_type=click").get_json()) == 1
    app.extensions["shortener"].db.close()


def test_errors_are_json_never_html(client):
    for method, path in [
        ("get", "/no/such/path"),
        ("delete", "/users"),
        ("patch", "/urls/1"),
        ("post", "/health"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code in (404, 405)
        assert response.is_json and "error" in response.get_json()


def test_body_too_large_is_413_json(app_factory):
    client = app_factory(max_content_length=1024).test_client()
    response = client.post("/urls", data="x" * 4096, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json() == {"error": "Request body too large"}
