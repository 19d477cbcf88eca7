"""Contract rows for /users."""

from __future__ import annotations

import io
import re

import pytest


@pytest.fixture
def client(contract_client):
    """Each test runs in the open profile and in the keys profile with an admin key."""
    return contract_client


TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


def test_create_user_returns_201_with_exactly_the_contract_fields(client):
    response = client.post("/users", json={"username": "alice", "email": "alice@example.com"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "username", "email", "created_at"}
    assert body["username"] == "alice" and body["email"] == "alice@example.com"
    assert isinstance(body["id"], int)
    assert TIMESTAMP.match(body["created_at"])


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "a@example.com"}, "username"),
        ({"username": "a"}, "email"),
        ({"username": "", "email": "a@example.com"}, "username"),
        ({"username": "   ", "email": "a@example.com"}, "username"),
        ({"username": 5, "email": "a@example.com"}, "username"),
        ({"username": "a", "email": ["a@example.com"]}, "email"),
        ({"username": "a", "email": "not-an-email"}, "email"),
        ({"username": "a", "email": "a@"}, "email"),
        ({"username": None, "email": "a@example.com"}, "username"),
    ],
)
def test_create_user_invalid_fields_are_422_naming_the_field(client, body, field):
    response = client.post("/users", json=body)
    assert response.status_code == 422
    payload = response.get_json()
    assert "error" in payload and field in payload["details"]


@pytest.mark.parametrize("raw", ['"a string"', "[1, 2]", "null", "42", "{bad json", ""])
def test_create_user_body_not_an_object_is_400(client, raw):
    response = client.post("/users", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_create_user_form_data_is_400(client):
    response = client.post("/users", data={"username": "a", "email": "a@example.com"})
    assert response.status_code == 400


def test_username_taken_is_409(client, make_user):
    make_user(username="bob", email="bob@example.com")
    response = client.post("/users", json={"username": "bob", "email": "other@example.com"})
    assert response.status_code == 409
    assert response.get_json()["details"] == {"username": "already taken"}


def test_email_taken_is_409_whatever_its_case(client, make_user):
    make_user(username="bob", email="bob@example.com")
    response = client.post("/users", json={"username": "robert", "email": "BOB@Example.com"})
    assert response.status_code == 409
    assert "email" in response.get_json()["details"]


def test_list_users_in_id_order_and_paged(client, make_user):
    created = [make_user() for _ in range(5)]
    everything = client.get("/users").get_json()
    assert [u["id"] for u in everything] == [u["id"] for u in created]
    page2 = client.get("/users?page=2&per_page=2").get_json()
    assert [u["id"] for u in page2] == [created[2]["id"], created[3]["id"]]
    assert client.get("/users?page=9&per_page=2").get_json() == []


@pytest.mark.parametrize("query", ["page=0", "page=-1", "page=abc", "per_page=0", "per_page=x", "page=1.5"])
def test_list_users_bad_paging_is_400(client, query):
    response = client.get(f"/users?{query}")
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_per_page_is_capped_at_the_maximum(app_factory, make_user):
    client = app_factory(per_page_max=3).test_client()
    for _ in range(4):
        make_user()
    assert len(client.get("/users?per_page=1000").get_json()) == 3


def test_unpaged_list_is_capped_at_the_configured_limit(stack, client, sql):
    sql("INSERT INTO users (username, email) SELECT 'u' || g, 'u' || g || '@x.io' FROM generate_series(1, 1005) g")
    from app.config import Settings

    assert Settings.model_fields["list_default_limit"].default >= 1000
    assert len(client.get("/users").get_json()) == 1005


def test_get_user_and_404(client, make_user):
    user = make_user()
    assert client.get(f"/users/{user['id']}").get_json() == user
    response = client.get("/users/999999")
    assert response.status_code == 404
    assert response.get_json() == {"error": "User not found"}
    assert client.get(f"/users/{2**70}").status_code == 404


def test_update_user(client, make_user):
    user = make_user()
    response = client.put(f"/users/{user['id']}", json={"username": "renamed"})
    assert response.status_code == 200
    assert response.get_json()["username"] == "renamed"
    assert response.get_json()["email"] == user["email"]
    assert client.put(f"/users/{user['id']}", json={"email": "new@example.com"}).get_json()["email"] == (
        "new@example.com"
    )


def test_update_user_errors(client, make_user):
    first, second = make_user(), make_user()
    assert client.put("/users/999999", json={"username": "x"}).status_code == 404
    assert client.put(f"/users/{2**70}", json={"username": "x"}).status_code == 404
    assert client.put(f"/users/{first['id']}", json={"username": 7}).status_code == 422
    assert client.put(f"/users/{first['id']}", data="[]", content_type="application/json").status_code == 400
    taken = client.put(f"/users/{first['id']}", json={"email": second["email"]})
    assert taken.status_code == 409
    # Keeping one's own name is not a conflict.
    assert client.put(f"/users/{first['id']}", json={"username": first["username"]}).status_code == 200


def test_delete_user(client, make_user, make_url):
    user = make_user()
    url = make_url(user_id=user["id"])
    assert client.delete(f"/users/{user['id']}").status_code == 204
    assert client.get(f"/users/{user['id']}").status_code == 404
    assert client.delete(f"/users/{user['id']}").status_code == 404
    assert client.delete(f"/users/{2**70}").status_code == 404
    # The user's links stay, without an owner.
    assert client.get(f"/urls/{url['id']}").get_json()["user_id"] is None


def _csv(client, text: str, field: str = "file"):
    data = {field: (io.BytesIO(text.encode()), "users.csv")}
    return client.post("/users/bulk", data=data, content_type="multipart/form-data")


def test_bulk_import_counts_every_row_and_keeps_existing(client, make_user):
    make_user(username="old", email="old@example.com")
    text = (
        "id,username,email,created_at\n"
        "10,ann,ann@example.com,2025-01-02 03:04:05\n"
        "11,ben,ben@example.com,\n"
        ",old2,old@example.com,\n"
        ",cat,cat@example.com,\n"
    )
    response = _csv(client, text)
    assert response.status_code == 201
    assert response.get_json()["imported"] == 4 and response.get_json()["count"] == 4
    users = {u["email"]: u for u in client.get("/users").get_json()}
    assert users["ann@example.com"]["id"] == 10
    assert users["ann@example.com"]["created_at"] == "2025-01-02T03:04:05"
    assert users["old@example.com"]["username"] == "old"
    assert "cat@example.com" in users
    # The id sequence moved past the imported ids.
    assert make_user()["id"] > 11


def test_bulk_import_same_file_twice_is_not_an_error(client):
    text = "username,email\nzed,zed@example.com\n"
    assert _csv(client, text).get_json()["imported"] == 1
    again = _csv(client, text)
    assert again.status_code == 201 and again.get_json()["imported"] == 1
    assert len(client.get("/users").get_json()) == 1


def test_bulk_import_errors(client):
    assert client.post("/users/bulk", data={}, content_type="multipart/form-data").status_code == 400
    assert _csv(client, "username,email\n", field="other").status_code == 400
    assert _csv(client, "").status_code == 400
    missing = _csv(client, "id,name,mail\n1,a,b\n")
    assert missing.status_code == 422
    assert set(missing.get_json()["details"]) == {"username", "email"}
    binary = client.post(
        "/users/bulk",
        data={"file": (io.BytesIO(b"\xff\xfe\x00\x81"), "x.csv")},
        content_type="multipart/form-data",
    )
    assert binary.status_code == 400


def test_bulk_import_reports_invalid_rows_without_failing(client):
    response = _csv(client, "username,email\ngood,good@example.com\nbad,not-an-email\n")
    assert response.status_code == 201
    body = response.get_json()
    assert body["imported"] == 1 and body["skipped"] == 1
    assert "line 3" in body["errors"]
