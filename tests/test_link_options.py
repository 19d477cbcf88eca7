"""Link options: expires_at and max_clicks, decided by the Redis script (so by the edge too) and
by the Python redirect; exactly N redirects under 50 concurrent clients."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from app.cache import counter_key


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).replace(microsecond=0).isoformat()


def clicks_of(sql, url_id: int) -> int:
    return sql("SELECT count(*) FROM events WHERE url_id = %s AND event_type = 'click'", (url_id,))[0][0]


def test_options_are_visible_validated_and_editable(client, make_url):
    url = make_url(expires_at="2030-01-01T01:00:00+01:00", max_clicks=5)
    assert (url["expires_at"], url["max_clicks"]) == ("2030-01-01T00:00:00", 5)
    assert client.get(f"/urls/{url['id']}").get_json()["max_clicks"] == 5
    plain = make_url()
    assert (plain["expires_at"], plain["max_clicks"]) == (None, None)
    for bad in ({"max_clicks": 0}, {"max_clicks": "5"}, {"expires_at": "soon"}, {"expires_at": 5}):
        response = client.post("/urls", json={"original_url": "https://example.com/x", **bad})
        assert response.status_code == 422, bad
        assert set(response.get_json()["details"]) == set(bad)
    updated = client.put(f"/urls/{url['id']}", json={"max_clicks": None, "expires_at": None}).get_json()
    assert (updated["expires_at"], updated["max_clicks"]) == (None, None)


def test_an_expired_link_is_a_404_and_records_nothing(client, make_url, sql, redis):
    url = make_url(expires_at=_iso(timedelta(hours=1)))
    code = url["short_code"]
    assert client.get(f"/{code}").status_code == 302  # fills the cache
    assert client.get(f"/{code}").status_code == 302  # from the cache, through the script
    # Expired while cached: the script reads Redis' clock and refuses.
    client.put(f"/urls/{url['id']}", json={"expires_at": _iso(timedelta(seconds=-1))})
    redis.delete(f"shortener:url:{code}")  # the tombstone would send it to PostgreSQL first
    stale = url["id"], url["user_id"], 302, url["original_url"]
    past = int(datetime.now(UTC).timestamp()) - 1
    redis.set(f"shortener:url:{code}", f"{stale[0]};{past};\t{stale[1] or ''}\t302\t{stale[3]}")
    assert client.get(f"/{code}").status_code == 404
    assert client.head(f"/{code}").status_code == 404
    # And from PostgreSQL (cache empty).
    redis.delete(f"shortener:url:{code}")
    assert client.get(f"/{code}").status_code == 404
    assert redis.get(f"shortener:url:{code}") == "-"
    assert client.get(f"/events?url_id={url['id']}&event_type=click").get_json().__len__() == 2
    assert clicks_of(sql, url["id"]) == 2


@pytest.mark.parametrize("cap", [1, 7])
def test_max_clicks_gives_exactly_n_redirects_under_50_concurrent_clients(app, make_url, sql, cap):
    url = make_url(max_clicks=cap)
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def follow() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(3):
            status = client.get(f"/{url['short_code']}").status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=follow) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(302) == cap
    assert statuses.count(404) == 150 - cap
    assert len(app.test_client().get(f"/events?url_id={url['id']}&event_type=click").get_json()) == cap


def test_max_clicks_holds_when_redis_lost_the_counter_or_is_away(app_factory, make_url, sql, redis, stack):
    url = make_url(max_clicks=3)
    code = url["short_code"]
    client = app_factory().test_client()
    assert [client.get(f"/{code}").status_code for _ in range(2)] == [302, 302]
    client.get(f"/events?url_id={url['id']}")  # the clicks stored
    # Redis lost its data: the counter starts again from the stored clicks.
    redis.delete(f"shortener:url:{code}", counter_key(code))
    assert [client.get(f"/{code}").status_code for _ in range(2)] == [302, 404]
    assert redis.get(counter_key(code)) == "3"
    # Without Redis the stored clicks decide (HEAD too, and it is no click).
    no_redis = app_factory(redis_url="").test_client()
    client.get(f"/events?url_id={url['id']}")
    assert no_redis.get(f"/{code}").status_code == 404
    assert no_redis.head(f"/{code}").status_code == 404
    other = make_url(max_clicks=2)
    assert [no_redis.get(f"/{other['short_code']}").status_code for _ in range(3)] == [302, 302, 404]
    assert no_redis.head(f"/{other['short_code']}").status_code == 404
    assert clicks_of(sql, other["id"]) == 2


def test_the_link_cache_flush_keeps_click_counters(app, make_url, redis):
    url = make_url(max_clicks=10)
    client = app.test_client()
    client.get(f"/{url['short_code']}")
    cache = app.extensions["shortener"].cache
    cache._flush_links()
    assert redis.get(counter_key(url["short_code"])) == "1"
    assert redis.get(f"shortener:url:{url['short_code']}") is None


def test_a_cache_entry_that_is_not_a_link_is_a_miss_not_an_error(app, make_url, redis):
    url = make_url()
    redis.set(f"shortener:url:{url['short_code']}", "1")  # e.g. a stray INCR
    assert app.test_client().get(f"/{url['short_code']}").status_code == 302
    assert app.extensions["shortener"].cache.breaker._failures == 0  # a miss, not a script error
    assert redis.get(f"shortener:url:{url['short_code']}").startswith(f"{url['id']}\t")
