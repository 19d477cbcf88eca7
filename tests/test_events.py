"""Contract rows for /events."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(contract_client):
    """Each test runs in the open profile and in the keys profile with an admin key."""
    return contract_client


def test_create_event(client, make_user, make_url):
    user, url = make_user(), make_url()
    body = {"event_type": "shared", "url_id": url["id"], "user_id": user["id"], "details": {"via": "mail"}}
    response = client.post("/events", json=body)
    assert response.status_code == 201
    event = response.get_json()
    assert set(event) == {"id", "url_id", "user_id", "event_type", "timestamp", "details"}
    assert event["details"] == {"via": "mail"} and event["url_id"] == url["id"]


def test_create_event_details_default_to_an_empty_object(client):
    event = client.post("/events", json={"event_type": "ping"}).get_json()
    assert event["details"] == {} and event["url_id"] is None and event["user_id"] is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "event_type"),
        ({"event_type": 3}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "x" * 51}, "event_type"),
        ({"event_type": "a", "url_id": "1"}, "url_id"),
        ({"event_type": "a", "user_id": True}, "user_id"),
        ({"event_type": "a", "details": [1, 2]}, "details"),
        ({"event_type": "a", "details": "text"}, "details"),
    ],
)
def test_create_event_invalid_is_422(client, body, field):
    response = client.post("/events", json=body)
    assert response.status_code == 422
    assert field in response.get_json()["details"]


@pytest.mark.parametrize("raw", ["[]", '"x"', "null", "{", "1"])
def test_create_event_non_object_is_400(client, raw):
    assert client.post("/events", data=raw, content_type="application/json").status_code == 400


def test_create_event_unknown_references_are_404(client):
    assert client.post("/events", json={"event_type": "a", "url_id": 9999}).status_code == 404
    assert client.post("/events", json={"event_type": "a", "user_id": 9999}).status_code == 404


def test_list_events_filters(client, make_user, make_url):
    user = make_user()
    url = make_url(user_id=user["id"])
    other = make_url()
    client.post("/events", json={"event_type": "shared", "url_id": url["id"], "user_id": user["id"]})
    client.get(f"/{url['short_code']}")
    everything = client.get("/events").get_json()
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert {e["event_type"] for e in client.get(f"/events?url_id={url['id']}").get_json()} == {
        "created",
        "shared",
        "click",
    }
    assert [e["url_id"] for e in client.get(f"/events?url_id={other['id']}").get_json()] == [other["id"]]
    shared = client.get("/events?event_type=shared").get_json()
    assert len(shared) == 1 and shared[0]["user_id"] == user["id"]
    assert len(client.get(f"/events?user_id={user['id']}").get_json()) == 3
    assert len(client.get("/events?page=1&per_page=2").get_json()) == 2


@pytest.mark.parametrize("query", ["url_id=x", "user_id=-3", "page=0", "per_page=a", "event_type=" + "x" * 51])
def test_list_events_bad_values_are_400(client, query):
    assert client.get(f"/events?{query}").status_code == 400
