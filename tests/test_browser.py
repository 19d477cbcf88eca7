"""The web page at / in a real headless Chromium (Debian's), served over real HTTP.

The app runs in a thread behind werkzeug's WSGI server on a loopback port; the browser fills
in the form and submits it like a person would. Chromium and its driver are installed from
Debian by the first test that needs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import BaseWSGIServer, make_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path("/tmp/shortener-page.png")
CODE = re.compile(r"^[A-Za-z0-9]{6}$")
ERROR_TEXT = "does not look like a web address"
LONG_URL = (
    "https://example.com/articles/2025/09/19/a-rather-long-path/that-nobody-wants-to-type"
    "?utm_source=newsletter&utm_medium=email&utm_campaign=autumn&ref=shortener-test#section-3"
)


def _install_chromium() -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing; install it as root: apt-get install -y chromium chromium-driver")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
    for args in (["update"], ["install", "--no-install-recommends", "chromium", "chromium-driver"]):
        result = subprocess.run([*apt, *args], env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"apt-get {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium and chromedriver, installed on first use."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _install_chromium()
    assert CHROMIUM.exists() and CHROMEDRIVER.exists()
    return CHROMEDRIVER


class _Dispatcher:
    """The live server's WSGI app: whichever app the current test made (each has a clean DB)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None, "no app attached to the live server"
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def live_server() -> Iterator[tuple[BaseWSGIServer, _Dispatcher]]:
    dispatcher = _Dispatcher()
    server = make_server("127.0.0.1", 0, dispatcher, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, dispatcher
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.fixture
def site(live_server: tuple[BaseWSGIServer, _Dispatcher], app_factory: Callable[..., Any]) -> str:
    """The base URL of the page; short links point back at the same server."""
    server, dispatcher = live_server
    base = f"http://127.0.0.1:{server.server_port}"
    dispatcher.app = app_factory(public_base_url=base)
    return base


def _browser(driver_path: Path, *, javascript: bool) -> tuple[webdriver.Chrome, str]:
    profile = tempfile.mkdtemp(prefix="shortener-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,700",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    driver.set_page_load_timeout(20)
    return driver, profile


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[webdriver.Chrome]:
    driver, profile = _browser(chromium, javascript=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_without_js(chromium: Path) -> Iterator[webdriver.Chrome]:
    driver, profile = _browser(chromium, javascript=False)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _submit(driver: webdriver.Chrome, site: str, value: str) -> None:
    driver.get(f"{site}/")
    field = driver.find_element(By.ID, "original_url")
    field.clear()
    field.send_keys(value)
    old_body = driver.find_element(By.TAG_NAME, "body")
    driver.find_element(By.ID, "shorten").click()
    # A real form post replaces the document; wait for the new one.
    WebDriverWait(driver, 15).until(ec.staleness_of(old_body))
    WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.ID, "shorten")))


def _shorten_and_follow(driver: webdriver.Chrome, site: str, sql: Callable[..., Any]) -> str:
    _submit(driver, site, LONG_URL)
    link = WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.ID, "short-link")))
    href = link.get_attribute("href")
    assert href is not None
    assert link.text == href
    assert href.startswith(f"{site}/")
    code = href.removeprefix(f"{site}/")
    assert CODE.match(code), f"short code {code!r} is not 6 letters/digits"
    assert driver.find_element(By.ID, "original").text == LONG_URL
    assert not driver.find_elements(By.ID, "error")
    # The form is empty again, ready for the next link.
    assert driver.find_element(By.ID, "original_url").get_attribute("value") == ""

    response = requests.get(href, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"] == LONG_URL

    rows = sql("SELECT original_url, is_active FROM urls WHERE short_code = %s", (code,))
    assert rows == [(LONG_URL, True)]
    return code


def test_shorten_a_link_in_the_browser(browser: webdriver.Chrome, site: str, sql: Callable[..., Any]) -> None:
    assert browser.execute_script("return 1 + 1") == 2  # JavaScript really is on in this one
    _shorten_and_follow(browser, site, sql)
    assert browser.title == "shortener"
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 1000


def test_the_page_renders_without_javascript(
    browser_without_js: webdriver.Chrome, site: str, sql: Callable[..., Any]
) -> None:
    # Prove the pref took: a page whose script would set the title leaves it untouched.
    browser_without_js.get("data:text/html,<title>before</title><script>document.title='ran'</script>")
    assert browser_without_js.title == "before"
    code = _shorten_and_follow(browser_without_js, site, sql)
    clicks = requests.get(f"{site}/events", params={"event_type": "click"}, timeout=10).json()
    assert [e["details"]["short_code"] for e in clicks] == [code]


@pytest.mark.parametrize(
    "bad_url",
    [
        pytest.param("http://portal", id="single-word-host"),
        pytest.param("ftp://example.com/file.txt", id="not-http"),
    ],
)
def test_an_invalid_link_shows_the_error_and_no_link(
    browser: webdriver.Chrome, site: str, sql: Callable[..., Any], bad_url: str
) -> None:
    # These pass the browser's own type=url check, so the server is the one that refuses them.
    _submit(browser, site, bad_url)
    error = WebDriverWait(browser, 15).until(ec.visibility_of_element_located((By.ID, "error")))
    assert ERROR_TEXT in error.text
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "short-link")
    # What was typed stays in the field so that it can be corrected.
    assert browser.find_element(By.ID, "original_url").get_attribute("value") == bad_url
    assert sql("SELECT count(*) FROM urls") == [(0,)]

    # The same form post without a browser: the status is 422 and the page is still HTML.
    response = requests.post(f"{site}/", data={"original_url": bad_url}, timeout=10)
    assert response.status_code == 422
    assert response.headers["Content-Type"].startswith("text/html")
    assert ERROR_TEXT in response.text
    assert 'id="short-link"' not in response.text


def test_the_browser_refuses_text_that_is_not_a_url(
    browser: webdriver.Chrome, site: str, sql: Callable[..., Any]
) -> None:
    browser.get(f"{site}/")
    field = browser.find_element(By.ID, "original_url")
    field.send_keys("not a link")
    browser.find_element(By.ID, "shorten").click()
    # type=url and required: the browser keeps the form and never posts it.
    assert browser.execute_script("return arguments[0].validity.valid", field) is False
    assert browser.current_url == f"{site}/"
    assert not browser.find_elements(By.ID, "result")
    assert sql("SELECT count(*) FROM urls") == [(0,)]
