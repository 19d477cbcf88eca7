"""The statistics page in a real headless Chromium, against the keys profile: the key typed into
the page, the chart, the totals and tables from a known click set; screenshots in docs/img/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import BaseWSGIServer

from app import clickstore, keys
from app.clicks import row_from_fields
from tests import test_browser
from tests.test_analytics import CLICK_SET, _fields

chromium = test_browser.chromium
browser = test_browser.browser
live_server = test_browser.live_server

pytestmark = pytest.mark.browser

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"


def _fill(driver: webdriver.Chrome, **fields: str) -> None:
    for name, value in fields.items():
        element = driver.find_element(By.ID, name)
        if element.get_attribute("type") in ("date", "select-one") or element.tag_name == "select":
            # A date field's typing order follows the browser's locale: set the value itself.
            driver.execute_script("arguments[0].value = arguments[1]", element, value)
        else:
            element.clear()
            element.send_keys(value)
    driver.find_element(By.ID, "show").click()


def test_the_statistics_page_shows_a_links_numbers_with_its_key(
    browser: webdriver.Chrome,
    live_server: tuple[BaseWSGIServer, Any],
    app_factory: Callable[..., Any],
) -> None:
    server, dispatcher = live_server
    site = f"http://127.0.0.1:{server.server_port}"
    app = app_factory(public_base_url=site, access_profile="keys")
    dispatcher.app = app
    db = app.extensions["shortener"].db
    admin, _ = keys.create(db, user_id=None, is_admin=True, name="page")
    url = requests.post(
        f"{site}/urls",
        json={"original_url": "https://example.com/launch"},
        headers={"Authorization": f"Bearer {admin}"},
    ).json()
    rows = [
        row_from_fields(_fields(url, ts, address) | {"a": agent, "r": referrer})
        for ts, agent, address, referrer in CLICK_SET
    ]
    clickstore.write(db, rows, False)

    page = requests.get(f"{site}/stats/view", timeout=10)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy

    browser.get(f"{site}/stats/view")
    # Without the key: the API's 401 is shown, nothing else.
    _fill(browser, url_id=str(url["id"]), **{"from": "2026-11-28", "to": "2026-11-30"})
    error = WebDriverWait(browser, 15).until(ec.visibility_of_element_located((By.ID, "error")))
    assert "API key" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()

    _fill(browser, key=admin)
    WebDriverWait(browser, 15).until(ec.visibility_of_element_located((By.ID, "result")))
    totals = {
        name: browser.find_element(By.ID, name).text for name in ("total_clicks", "humans", "bots", "unique_visitors")
    }
    assert totals == {"total_clicks": "7", "humans": "6", "bots": "1", "unique_visitors": "5"}
    referrers = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#referrers tbody tr")]
    assert referrers == ["news.example 3", "(none) 2", "t.co 2"]
    devices = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#devices tbody tr")]
    assert devices == ["desktop 3", "mobile 3", "bot 1"]
    # Two days, humans on both and a bot on the second: three bars.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect")) == 3
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "qr").get_attribute("src").startswith("blob:"))
    assert browser.execute_script("return document.getElementById('qr').naturalWidth") > 0
    # The key never reached a URL.
    assert admin not in browser.current_url
    IMAGES.mkdir(exist_ok=True)
    browser.set_window_size(1100, 1000)
    browser.save_screenshot(str(IMAGES / "stats-page.png"))

    _fill(browser, granularity="hour")
    WebDriverWait(browser, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart rect")) == 6)
    browser.save_screenshot(str(IMAGES / "stats-page-hourly.png"))
    assert (IMAGES / "stats-page.png").stat().st_size > 5000
