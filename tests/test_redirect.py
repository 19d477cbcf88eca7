"""GET /<short_code>: redirects, clicks, the cache."""

from __future__ import annotations

import pytest

from app.cache import KEY_PREFIX, NEGATIVE, TOMBSTONE


def clicks(client, url_id):
    return client.get(f"/events?url_id={url_id}&event_type=click").get_json()


def test_redirect_is_302_to_the_original_url_and_records_a_click(client, make_user, make_url):
    user = make_user()
    url = make_url(user_id=user["id"])
    response = client.get(
        f"/{url['short_code']}", headers={"Referer": "https://ref.example/", "User-Agent": "pytest-agent"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == url["original_url"]
    [click] = clicks(client, url["id"])
    assert click["user_id"] == user["id"]
    assert click["details"] == {
        "short_code": url["short_code"],
        "referrer": "https://ref.example/",
        "user_agent": "pytest-agent",
        # The click carries the redirect's request id: its log lines and its event meet.
        "request_id": response.headers["X-Request-ID"],
    }


def test_cached_and_uncached_redirects_both_count(client, make_url, redis):
    url = make_url()
    for _ in range(3):
        assert client.get(f"/{url['short_code']}").status_code == 302
    assert redis.get(KEY_PREFIX + url["short_code"]).startswith(f"{url['id']}\t")
    assert len(clicks(client, url["id"])) == 3


def test_a_cached_redirect_survives_redis_forgetting_its_scripts(client, make_url, redis):
    url = make_url()
    assert client.get(f"/{url['short_code']}").status_code == 302  # fills the cache
    redis.script_flush()  # as after a Redis restart: the link is cached, the script is not
    assert redis.get(KEY_PREFIX + url["short_code"]) is not None
    for _ in range(2):  # the first loads the script again, the second uses it
        response = client.get(f"/{url['short_code']}")
        assert response.status_code == 302 and response.headers["Location"] == url["original_url"]
    assert len(clicks(client, url["id"])) == 3


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_configured_redirect_status(client, make_url, status):
    url = make_url(redirect_type=status)
    assert url["redirect_type"] == status
    for _ in range(2):  # uncached, then cached
        response = client.get(f"/{url['short_code']}")
        assert response.status_code == status
        assert response.headers["Location"] == url["original_url"]


def test_unknown_code_is_404_json_and_no_event(client, sql, redis):
    for _ in range(2):
        response = client.get("/Zz9Zz9")
        assert response.status_code == 404
        assert response.get_json() == {"error": "Short link not found"}
    assert redis.get(KEY_PREFIX + "Zz9Zz9") == NEGATIVE
    assert sql("SELECT count(*) FROM events")[0][0] == 0


def test_malformed_code_is_404_without_touching_storage(client):
    for path in ("/a.b", "/%F0%9F%98%80", "/" + "x" * 65):
        response = client.get(path)
        assert response.status_code == 404
        assert "error" in response.get_json()


def test_head_redirects_but_is_not_a_click(client, make_url):
    url = make_url()
    assert client.head(f"/{url['short_code']}").status_code == 302
    client.get(f"/{url['short_code']}")  # fill the cache
    assert client.head(f"/{url['short_code']}").status_code == 302
    assert client.head("/unknwn").status_code == 404
    assert len(clicks(client, url["id"])) == 1


def test_custom_code_created_after_a_miss_redirects_at_once(client):
    assert client.get("/later-code").status_code == 404
    client.post("/urls", json={"original_url": "https://example.com/l", "short_code": "later-code"})
    assert client.get("/later-code").status_code == 302


def test_a_change_leaves_a_tombstone_so_a_stale_read_cannot_refill(app, client, make_url, redis):
    url = make_url()
    client.get(f"/{url['short_code']}")
    client.put(f"/urls/{url['id']}", json={"original_url": "https://example.com/new"})
    assert redis.get(KEY_PREFIX + url["short_code"]) == TOMBSTONE
    # A reader that loaded the old row before the change tries to write it back: refused.
    from app.cache import CachedLink

    app.extensions["shortener"].cache.fill(url["short_code"], CachedLink(url["id"], None, 302, "https://old"))
    assert redis.get(KEY_PREFIX + url["short_code"]) == TOMBSTONE
    response = client.get(f"/{url['short_code']}")
    assert response.headers["Location"] == "https://example.com/new"


def test_user_agent_and_referrer_are_truncated(client, make_url):
    url = make_url()
    client.get(f"/{url['short_code']}", headers={"User-Agent": "a" * 5000})
    [click] = clicks(client, url["id"])
    assert len(click["details"]["user_agent"]) == 512


def test_header_text_is_stored_as_sent_without_what_postgres_refuses(client, make_url):
    url = make_url()
    # WSGI hands headers over as latin-1: the UTF-8 bytes of "café" arrive as "cafÃ©".
    client.get(f"/{url['short_code']}", headers={"User-Agent": "caf\u00c3\u00a9 a\x00b", "Referer": "r\x01"})
    response = client.get(f"/events?url_id={url['id']}&event_type=click")
    assert response.status_code == 200
    [click] = response.get_json()
    assert click["details"]["user_agent"] == "caf\u00e9 ab"
    assert click["details"]["referrer"] == "r"
