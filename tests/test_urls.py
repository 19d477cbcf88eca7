"""Contract rows for /urls."""

from __future__ import annotations

import re

import pytest


@pytest.fixture
def client(contract_client):
    """Each test runs in the open profile and in the keys profile with an admin key."""
    return contract_client


URL_FIELDS = {"id", "user_id", "short_code", "original_url", "title", "is_active", "created_at", "updated_at"}


def test_create_url_returns_201_with_a_six_character_code(client, make_user):
    user = make_user()
    response = client.post(
        "/urls", json={"original_url": "https://example.com/a?b=c#d", "user_id": user["id"], "title": "T"}
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) >= URL_FIELDS
    assert re.fullmatch(r"[A-Za-z0-9]{6}", body["short_code"])
    assert body["user_id"] == user["id"] and body["title"] == "T" and body["is_active"] is True
    assert body["original_url"] == "https://example.com/a?b=c#d"
    assert body["short_url"] == f"http://sho.rt/{body['short_code']}"
    assert response.headers["Location"] == f"/urls/{body['id']}"


def test_create_url_without_user_or_title_gives_nulls(client):
    body = client.post("/urls", json={"original_url": "http://example.org"}).get_json()
    assert body["user_id"] is None and body["title"] is None


def test_create_url_writes_a_created_event(client, make_url):
    url = make_url()
    events = client.get(f"/events?url_id={url['id']}").get_json()
    assert [e["event_type"] for e in events] == ["created"]
    assert events[0]["details"]["short_code"] == url["short_code"]


def test_the_created_event_holds_the_link_and_its_owner(client, make_user, sql):
    user = make_user()
    url = client.post("/urls", json={"original_url": "https://example.com/owned", "user_id": user["id"]}).get_json()
    rows = sql('SELECT url_id, user_id, event_type, details, "timestamp" FROM events WHERE url_id = %s', (url["id"],))
    assert len(rows) == 1
    url_id, user_id, event_type, details, _ = rows[0]
    assert (url_id, user_id, event_type) == (url["id"], user["id"], "created")
    assert details == {"short_code": url["short_code"], "original_url": "https://example.com/owned"}


def test_a_taken_code_writes_neither_a_link_nor_an_event(client, sql):
    client.post("/urls", json={"original_url": "https://example.com", "short_code": "taken-1"})
    before = sql("SELECT count(*) FROM urls")[0][0], sql("SELECT count(*) FROM events")[0][0]
    assert client.post("/urls", json={"original_url": "https://e.org", "short_code": "taken-1"}).status_code == 409
    assert (sql("SELECT count(*) FROM urls")[0][0], sql("SELECT count(*) FROM events")[0][0]) == before


def test_a_random_code_that_collides_is_drawn_again_with_one_event(client, make_url, sql, monkeypatch):
    from app import links

    first = make_url()
    codes = iter([first["short_code"], first["short_code"], "Fresh1"])
    monkeypatch.setattr(links, "new_code", lambda: next(codes))
    second = client.post("/urls", json={"original_url": "https://example.com/second"}).get_json()
    assert second["short_code"] == "Fresh1"
    events = sql("SELECT url_id, event_type FROM events ORDER BY id")
    assert events == [(first["id"], "created"), (second["id"], "created")]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "original_url"),
        ({"original_url": ""}, "original_url"),
        ({"original_url": "notaurl"}, "original_url"),
        ({"original_url": "ftp://example.com/file"}, "original_url"),
        ({"original_url": "javascript:alert(1)"}, "original_url"),
        ({"original_url": "http://"}, "original_url"),
        ({"original_url": "http://intranet/page"}, "original_url"),
        ({"original_url": "https://exa mple.com"}, "original_url"),
        ({"original_url": "https://example.com/" + "a" * 2048}, "original_url"),
        ({"original_url": 12}, "original_url"),
        ({"original_url": "https://example.com", "user_id": "1"}, "user_id"),
        ({"original_url": "https://example.com", "user_id": True}, "user_id"),
        ({"original_url": "https://example.com", "user_id": 1.5}, "user_id"),
        ({"original_url": "https://example.com", "title": 5}, "title"),
        ({"original_url": "https://example.com", "title": ["x"]}, "title"),
        ({"original_url": "https://example.com", "short_code": "ab"}, "short_code"),
        ({"original_url": "https://example.com", "short_code": "has space"}, "short_code"),
        ({"original_url": "https://example.com", "short_code": "users"}, "short_code"),
        ({"original_url": "https://example.com", "short_code": "Health"}, "short_code"),
        ({"original_url": "https://example.com", "redirect_type": 303}, "redirect_type"),
    ],
)
def test_create_url_invalid_values_are_422(client, body, field):
    response = client.post("/urls", json=body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["details"]


def test_create_url_unknown_user_is_404(client):
    response = client.post("/urls", json={"original_url": "https://example.com", "user_id": 424242})
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_custom_code_and_its_conflict(client):
    first = client.post("/urls", json={"original_url": "https://example.com", "short_code": "my-link"})
    assert first.status_code == 201 and first.get_json()["short_code"] == "my-link"
    second = client.post("/urls", json={"original_url": "https://example.org", "short_code": "my-link"})
    assert second.status_code == 409
    assert second.get_json()["details"] == {"short_code": "already taken"}


def test_list_urls_filters_and_paging(client, make_user, make_url):
    alice, bob = make_user(), make_user()
    a1 = make_url(user_id=alice["id"])
    b1 = make_url(user_id=bob["id"])
    a2 = make_url(user_id=alice["id"])
    client.put(f"/urls/{a2['id']}", json={"is_active": False})
    assert [u["id"] for u in client.get("/urls").get_json()] == [a1["id"], b1["id"], a2["id"]]
    assert [u["id"] for u in client.get(f"/urls?user_id={alice['id']}").get_json()] == [a1["id"], a2["id"]]
    for value in ("true", "TRUE", "1", "True"):
        assert [u["id"] for u in client.get(f"/urls?is_active={value}").get_json()] == [a1["id"], b1["id"]]
    for value in ("false", "0", "FaLsE"):
        assert [u["id"] for u in client.get(f"/urls?is_active={value}").get_json()] == [a2["id"]]
    assert [u["id"] for u in client.get("/urls?page=2&per_page=1").get_json()] == [b1["id"]]
    assert client.get(f"/urls?user_id={alice['id']}&is_active=false").get_json()[0]["id"] == a2["id"]


@pytest.mark.parametrize("query", ["user_id=abc", "user_id=0", "is_active=maybe", "is_active=", "page=x"])
def test_list_urls_bad_filters_are_400(client, query):
    response = client.get(f"/urls?{query}")
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_get_url_and_404(client, make_url):
    url = make_url()
    assert client.get(f"/urls/{url['id']}").get_json() == url
    assert client.get("/urls/987654").status_code == 404
    assert client.get(f"/urls/{2**64}").status_code == 404


def test_update_url_moves_updated_at_and_writes_updated_events(client, make_url):
    url = make_url()
    response = client.put(
        f"/urls/{url['id']}",
        json={"title": "New", "is_active": False, "original_url": "https://example.net/x"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["title"] == "New" and body["is_active"] is False
    assert body["original_url"] == "https://example.net/x"
    assert body["updated_at"] > url["updated_at"]
    assert body["created_at"] == url["created_at"]
    updates = client.get(f"/events?url_id={url['id']}&event_type=updated").get_json()
    assert {e["details"]["field"] for e in updates} == {"title", "is_active", "original_url"}


def test_update_url_title_can_be_cleared(client, make_url):
    url = make_url(title="x")
    assert client.put(f"/urls/{url['id']}", json={"title": None}).get_json()["title"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"is_active": "false"},
        {"is_active": 0},
        {"is_active": None},
        {"title": 3},
        {"original_url": "nope"},
        {"original_url": None},
        {"redirect_type": 200},
        {},
        {"unknown": 1},
    ],
)
def test_update_url_invalid_is_422(client, make_url, body):
    url = make_url()
    response = client.put(f"/urls/{url['id']}", json=body)
    assert response.status_code == 422
    assert "error" in response.get_json()


def test_update_url_errors(client, make_url):
    url = make_url()
    assert client.put("/urls/999999", json={"title": "x"}).status_code == 404
    assert client.put(f"/urls/{2**64}", json={"title": "x"}).status_code == 404
    assert client.put(f"/urls/{url['id']}", data="null", content_type="application/json").status_code == 400


def test_delete_url(client, make_url):
    url = make_url()
    assert client.delete(f"/urls/{url['id']}").status_code == 204
    assert client.get(f"/urls/{url['id']}").status_code == 404
    assert client.get(f"/{url['short_code']}").status_code == 404
    assert client.delete(f"/urls/{url['id']}").status_code == 404
    assert client.put(f"/urls/{url['id']}", json={"is_active": True}).status_code == 404
    assert client.delete(f"/urls/{2**64}").status_code == 404
    assert url["id"] not in [u["id"] for u in client.get("/urls").get_json()]
    deleted = client.get(f"/events?url_id={url['id']}&event_type=deleted").get_json()
    assert len(deleted) == 1


def test_deleted_code_is_never_handed_out_again(client, make_url):
    url = make_url(short_code="keepme")
    client.delete(f"/urls/{url['id']}")
    again = client.post("/urls", json={"original_url": "https://example.com", "short_code": "keepme"})
    assert again.status_code == 409
