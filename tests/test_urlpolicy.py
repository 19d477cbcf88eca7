"""The URL policy (app/urlpolicy.py) through the API and the web form, with real storage."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import urlpolicy

# (url, what the reason says): every class of refused target, in the spellings a browser
# turns into the same address.
REFUSED = [
    ("http://127.0.0.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7F000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.0.0.%31/", "loopback"),
    ("http://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/", "loopback"),  # full-width
    ("http://[::1]:5432/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0x/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1:8080/admin", "private"),
    ("http://3232235777/", "private"),  # 192.168.1.1
    ("http://[fd00::1]/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[64:ff9b:1::1]/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.127.255.254/", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.1/", "reserved"),
    ("http://198.18.0.1/", "reserved"),
    ("http://[2001:db8::1]/", "reserved"),
    ("http://[100::1]/", "reserved"),
    ("http://[4000::1]/", "reserved"),
    ("http://localhost/", "local-only"),
    ("http://LOCALHOST:8080/", "local-only"),
    ("http://api.localhost/", "local-only"),
    ("http://localhost.localdomain/", "local-only"),
    ("http://printer.local/", "local-only"),
    ("http://metadata.google.internal/", "local-only"),
    ("http://nas.home.arpa/", "local-only"),
    ("http://1.0.0.127.in-addr.arpa/", "local-only"),
    ("http://router.lan/", "local-only"),
    ("http://wiki.corp/", "local-only"),
    ("http://x.test/", "local-only"),
    ("http://user:pass@bank.example@evil.example/", "user info"),
    ("http://user@example.com/", "user info"),
    ("http://@example.com/", "user info"),
    ("https://p\u0430ypal.com/", "mixes scripts"),  # Cyrillic a in a Latin label
    ("https://xn--pypal-4ve.com/", "mixes scripts"),  # the same, as punycode
    ("https://g\u03bfogle.com/", "mixes scripts"),  # Greek omicron
    ("http://1.2.3.4.5/", "valid host"),
    ("http://256.0.0.1/", "valid host"),
    ("http://0x100000000/", "valid host"),
    ("http://[fe80::1%25eth0]/", "valid host"),
    ("http://exa%00mple.com/", "valid host"),
    ("http://exa%ffmple.com/", "valid host"),  # not UTF-8 once decoded
    ("http://xn--zz-.com/", "valid host"),  # not punycode
    ("http://a\u200db.com/", "valid host"),  # a zero-width joiner outside its context
    ("http://intranet/page", "local-only"),
    ("http://portal/page", "valid host"),  # a single word is not a link
]

ALLOWED = [
    "https://example.com/",
    "https://example.com:8443/path?q=1",
    "http://93.184.215.14/",
    "http://8.8.8.8:80/dns",
    "http://[2606:4700:4700::1111]/",
    "http://[64:ff9b::808:808]/",  # NAT64 of a public address
    "https://\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444/",  # пример.рф: all Cyrillic
    "https://xn--e1afmkfd.xn--p1ai/",  # the same, as punycode
    "https://b\u00fccher.example/",
    "https://xn--bcher-kva.example/",
    "https://\u4f8b\u3048.\u30c6\u30b9\u30c8.jp/",  # Han, Hiragana, Katakana: Japanese
    "https://local.example.com/",  # "local" as a label, not the suffix
    "https://localhost.example.com/",
    "https://10.0.0.1.example.com/",
    "https://example.com./",
    "https://a-b.co/p",
]


@pytest.mark.parametrize("url, reason", REFUSED)
def test_refused_targets_are_422_with_the_reason(client, url, reason):
    response = client.post("/urls", json={"original_url": url})
    assert response.status_code == 422, url
    body = response.get_json()
    assert body["error"] == "Validation failed"
    assert reason in body["details"]["original_url"], body


@pytest.mark.parametrize("url", ALLOWED)
def test_public_targets_and_look_alikes_of_refused_ones_pass(client, url):
    response = client.post("/urls", json={"original_url": url})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["original_url"] == url  # stored as written


def test_put_applies_the_policy_and_leaves_the_link_alone(client, make_url):
    url = make_url()
    response = client.put(f"/urls/{url['id']}", json={"original_url": "http://169.254.169.254/"})
    assert response.status_code == 422
    assert "link-local" in response.get_json()["details"]["original_url"]
    assert client.get(f"/urls/{url['id']}").get_json()["original_url"] == url["original_url"]


def test_the_web_form_applies_the_policy_and_says_why(client, sql):
    response = client.post("/", data={"original_url": "http://[::1]/"})
    assert response.status_code == 422
    assert "cannot be shortened: it must not point to a loopback address" in response.get_data(as_text=True)
    response = client.post("/", data={"original_url": "http://portal/"})
    assert response.status_code == 422
    assert "does not look like a web address" in response.get_data(as_text=True)
    assert sql("SELECT count(*) FROM urls") == [(0,)]


def test_links_to_the_service_itself_are_refused(app_factory):
    client = app_factory(public_base_url="https://Sho.RT", own_hostnames="go.example.org, s.example.net").test_client()
    for url in ("http://sho.rt/abc123", "https://SHO.RT./x", "https://go.example.org/x", "http://s.example.net:81/"):
        response = client.post("/urls", json={"original_url": url})
        assert response.status_code == 422, url
        assert "this shortener" in response.get_json()["details"]["original_url"]
    # Other names under the same domain are other sites.
    assert client.post("/urls", json={"original_url": "https://www.sho.rt/"}).status_code == 201


def test_a_service_reached_by_address_refuses_links_to_that_address(app_factory):
    client = app_factory(public_base_url="http://93.184.215.14:8080").test_client()
    response = client.post("/urls", json={"original_url": "http://1572394766/x"})  # 93.184.215.14
    assert "this shortener" in response.get_json()["details"]["original_url"]
    # A client calling the service by a name the policy cannot read still gets its link.
    response = client.post("/urls", json={"original_url": "https://example.com/"}, base_url="http://a_b")
    assert response.status_code == 201


def test_without_a_public_base_url_the_host_the_client_used_is_ours(app_factory):
    client = app_factory(public_base_url="").test_client()
    response = client.post("/urls", json={"original_url": "https://sho.example/x"}, base_url="http://sho.example")
    assert response.status_code == 422
    assert client.post("/urls", json={"original_url": "https://other.example/x"}).status_code == 201


def test_the_blocklist_blocks_its_domains_and_their_subdomains(app_factory, tmp_path):
    listing = tmp_path / "blocklist"
    listing.write_text(
        "# phishing reported 2026-11\nevil.example\n\n  Bad.Example.ORG  # a comment\n*.wild.example\n"
        "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444\nzip\n203.0.114.9\n",
        encoding="utf-8",
    )
    client = app_factory(url_blocklist_file=str(listing)).test_client()
    for url in (
        "https://evil.example/",
        "https://login.evil.example/",
        "https://a.b.evil.example./x",
        "https://bad.example.org/",
        "https://www.wild.example/",
        "https://xn--e1afmkfd.xn--p1ai/",  # listed in Unicode, asked in punycode
        "https://files.zip/",  # a whole top-level domain
        "http://203.0.114.9:8080/",  # an address
        "http://3405804041/",  # the same address, spelled as one number
    ):
        response = client.post("/urls", json={"original_url": url})
        assert response.status_code == 422, url
        assert response.get_json()["details"]["original_url"] == "points to a blocked domain"
    for url in ("https://notevil.example/", "https://evil.example.com/", "https://example.org/"):
        assert client.post("/urls", json={"original_url": url}).status_code == 201, url


def test_a_blocklist_line_that_is_not_a_domain_stops_the_start(tmp_path):
    listing = tmp_path / "blocklist"
    listing.write_text("good.example\nnot a domain\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        urlpolicy.read_blocklist(str(listing))
    with pytest.raises(FileNotFoundError):
        urlpolicy.read_blocklist(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "labels, address",
    [
        (["2130706433"], "127.0.0.1"),
        (["0x7f", "1"], "127.0.0.1"),
        (["0177", "0", "0", "1"], "127.0.0.1"),
        (["127", "1"], "127.0.0.1"),
        (["10", "0x10", "0300"], "10.16.0.192"),
        (["0x", "0"], "0.0.0.0"),
        (["1", "2", "3", "4", "5"], None),
        (["1", "", "3"], None),
        (["0x1g"], None),
        (["09"], None),  # a leading zero makes it octal, and 9 is no octal digit
        (["1", "16777216"], None),
    ],
)
def test_ipv4_hosts_parse_as_browsers_parse_them(labels, address):
    result = urlpolicy.whatwg_ipv4(labels)
    assert (str(result) if result else None) == address


def test_scripts_per_label():
    assert urlpolicy.mixes_scripts("p\u0430ypal")
    assert not urlpolicy.mixes_scripts("\u043f\u0440\u0438\u043c\u0435\u0440")
    assert not urlpolicy.mixes_scripts("abc-123")
    assert not urlpolicy.mixes_scripts("\u4f8b\u3048abc")  # Japanese with Latin
    assert urlpolicy.mixes_scripts("\u03b1\u0431")  # Greek with Cyrillic


# --- property: every spelling of an address gets the address's verdict -----------------------
_SPELLINGS = st.sampled_from(["dec", "hex", "oct"])


def _spell(number: int, how: str) -> str:
    return {"dec": str(number), "hex": hex(number), "oct": "0" + oct(number)[2:]}[how]


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[ipaddress.IPv4Address, str]:
    """An address, and one of the ways a browser lets it be written (1 to 4 parts, each part in
    decimal, hex or octal, the last part holding the remaining bytes)."""
    address = ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))
    octets = list(address.packed)
    parts = draw(st.integers(1, 4))
    head = octets[: parts - 1]
    tail = int.from_bytes(bytes(octets[parts - 1 :]), "big")
    spelled = [_spell(o, draw(_SPELLINGS)) for o in head] + [_spell(tail, draw(_SPELLINGS))]
    return address, ".".join(spelled) + draw(st.sampled_from(["", "."]))


@settings(max_examples=400, deadline=None)
@given(ipv4_spellings())
def test_every_ipv4_spelling_gets_the_verdict_of_its_dotted_quad(case):
    address, host = case
    assert urlpolicy.parse_host(host).address == address
    expected = urlpolicy.ip_refusal(address)
    for url in (f"http://{host}/", f"http://[::ffff:{address}]/"):
        try:
            urlpolicy.DEFAULT.check(urlsplit(url))
            verdict = None
        except urlpolicy.Refused as exc:
            verdict = str(exc).removeprefix("must not point to ")
        assert verdict == expected, url
