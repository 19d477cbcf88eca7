"""The statistics API: who sees a link's numbers, /stats/top, bad parameters, /openapi.json."""

from __future__ import annotations

import dataclasses

import pytest

from app import clicks, clickstore, keys
from tests.conftest import keyed_client


def _click(url: dict, ts: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        click = dataclasses.replace(clicks.new_click("https://ref.example/", "curl/8.5", address=f"10.1.0.{i}"), ts=ts)
        rows.append(clicks.row_from_fields(click.fields(url["id"], url["user_id"], url["short_code"])))
    return rows


@pytest.fixture
def keyed(app_factory):
    """The keys profile: an admin, two users with a key each and links with known clicks."""
    app = app_factory(access_profile="keys")
    db = app.extensions["shortener"].db
    admin = keyed_client(app, keys.create(db, user_id=None, is_admin=True, name="admin")[0])
    users = [admin.post("/users", json={"username": f"u{i}", "email": f"u{i}@example.com"}).get_json() for i in (1, 2)]
    one, two = (keyed_client(app, keys.create(db, user_id=u["id"], is_admin=False, name="k")[0]) for u in users)
    links = {
        "a": one.post("/urls", json={"original_url": "https://example.com/a"}).get_json(),
        "b": two.post("/urls", json={"original_url": "https://example.com/b"}).get_json(),
        "c": one.post("/urls", json={"original_url": "https://example.com/c"}).get_json(),
    }
    clickstore.write(db, _click(links["a"], "2026-11-20T12:00:00", 5), False)
    clickstore.write(db, _click(links["b"], "2026-11-21T12:00:00", 3), False)
    clickstore.write(db, _click(links["c"], "2026-11-22T12:00:00", 1), False)
    clickstore.write(db, _click(links["c"], "2026-10-01T12:00:00", 9), False)  # before the range
    return {"app": app, "admin": admin, "one": one, "two": two, "links": links}


RANGE = "from=2026-11-01&to=2026-12-01"


def test_only_the_owner_or_an_admin_sees_a_links_numbers(keyed):
    link = keyed["links"]["a"]
    for who in ("admin", "one"):
        response = keyed[who].get(f"/urls/{link['id']}/stats?{RANGE}")
        assert response.status_code == 200
        assert response.get_json()["total_clicks"] == 5
    # Another user's key: the same 404 as for a link that does not exist.
    hidden = keyed["two"].get(f"/urls/{link['id']}/stats?{RANGE}")
    missing = keyed["one"].get(f"/urls/999999/stats?{RANGE}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_json() == missing.get_json()
    anonymous = keyed["app"].test_client().get(f"/urls/{link['id']}/stats")
    assert anonymous.status_code == 401


def test_top_links_all_for_an_admin_own_for_a_user(keyed):
    links = keyed["links"]

    def top(who: str, query: str = RANGE) -> list[tuple[str, int]]:
        response = keyed[who].get(f"/stats/top?{query}")
        assert response.status_code == 200
        return [(link["short_code"], link["clicks"]) for link in response.get_json()["links"]]

    a, b, c = (links[k]["short_code"] for k in "abc")
    assert top("admin") == [(a, 5), (b, 3), (c, 1)]
    assert top("one") == [(a, 5), (c, 1)]
    assert top("two") == [(b, 3)]
    assert top("admin", RANGE + "&limit=1") == [(a, 5)]
    assert top("admin", "from=2026-10-01&to=2026-10-02") == [(c, 9)]
    body = keyed["admin"].get(f"/stats/top?{RANGE}").get_json()
    assert body["links"][0] == {
        "url_id": links["a"]["id"],
        "short_code": a,
        "clicks": 5,
        "humans": 0,  # curl is a bot to CrawlerDetect
        "bots": 5,
        "unique_visitors": 5,
    }
    # A deleted link leaves the table.
    assert keyed["admin"].delete(f"/urls/{links['a']['id']}").status_code == 204
    assert top("admin") == [(b, 3), (c, 1)]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("from=2026-11-02&to=2026-11-01", "from"),
        ("from=2026-11-01&to=2026-11-01", "from"),
        ("from=2000-01-01&to=2026-01-01&granularity=hour", "to"),
        ("top=0", "top"),
        ("top=101", "top"),
        ("top=x", "top"),
        ("from=" + "9" * 50, "from"),
    ],
)
def test_bad_parameters_are_a_json_400_naming_them(client, make_url, query, name):
    url = make_url()
    response = client.get(f"/urls/{url['id']}/stats?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] and name in body["details"]


def test_bad_top_parameters_and_an_empty_range(client):
    assert client.get("/stats/top?limit=1001").status_code == 400
    assert client.get("/stats/top?from=2026-11-02&to=2026-11-01").get_json()["details"] == {"from": "not before 'to'"}
    empty = client.get("/stats/top").get_json()
    assert empty["links"] == []


def test_a_link_without_clicks_has_a_full_empty_series(client, make_url):
    url = make_url()
    stats = client.get(f"/urls/{url['id']}/stats?from=2026-11-01&to=2026-11-04").get_json()
    assert [b["time"] for b in stats["series"]] == ["2026-11-01T00:00:00", "2026-11-02T00:00:00", "2026-11-03T00:00:00"]
    assert {b["clicks"] for b in stats["series"]} == {0}
    assert stats["total_clicks"] == stats["unique_visitors"] == 0
    assert stats["referrers"] == stats["browsers"] == stats["operating_systems"] == stats["devices"] == []
    # Without a range: the last 30 days, up to the end of today.
    assert len(client.get(f"/urls/{url['id']}/stats").get_json()["series"]) == 30


def test_the_statistics_are_described_in_openapi(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/urls/{url_id}/stats"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"from", "to", "granularity", "top"}
    assert set(operation["responses"]) >= {"200", "400", "401", "404"}
    assert "/stats/top" in spec["paths"]
    assert {"LinkStats", "TopLinks"} <= set(spec["components"]["schemas"])


def test_the_clicks_export_is_a_streamed_csv_read_page_by_page(keyed, monkeypatch):
    from app.api import exports

    monkeypatch.setattr(exports, "EXPORT_PAGE", 2)  # 5 clicks: three pages
    link = keyed["links"]["a"]
    response = keyed["one"].get(f"/urls/{link['id']}/clicks.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv"
    assert f'filename="{link["short_code"]}-clicks.csv"' in response.headers["Content-Disposition"]
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "time,click_id,is_bot,browser,os,device,referrer_domain,visitor,client_addr"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 5 and len({r[1] for r in rows}) == 5
    assert {(r[0], r[2], r[3], r[5], r[6], r[8]) for r in rows} == {
        ("2026-11-20T12:00:00", "True", "curl", "bot", "ref.example", "")
    }
    assert keyed["two"].get(f"/urls/{link['id']}/clicks.csv").status_code == 404


def test_qr_codes_of_a_link(keyed):
    import io

    import segno

    link = keyed["links"]["a"]
    svg = keyed["one"].get(f"/urls/{link['id']}/qr.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert svg.get_data(as_text=True).startswith("<svg")
    png = keyed["admin"].get(f"/urls/{link['id']}/qr.png")
    assert png.mimetype == "image/png" and png.data.startswith(b"\x89PNG\r\n\x1a\n")
    # The code holds the short URL: the same symbol segno makes of it.
    expected = io.BytesIO()
    segno.make(link["short_url"], error="m").save(expected, kind="png", scale=8, border=2)
    assert png.data == expected.getvalue()
    assert keyed["two"].get(f"/urls/{link['id']}/qr.svg").status_code == 404
    assert keyed["one"].get(f"/urls/{link['id']}/qr.gif").status_code == 404
