"""The status page ``GET /`` in a real headless Chromium (Debian's chromium + chromium-driver).

The page is driven through Selenium and the system chromedriver; no browser is downloaded.
A screenshot is kept as a test artifact (``tests/artifacts/status-page.png``, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tests.gateway_support import FAST_ROUTER, Gateway, provider_tables

from provhub.testing import Behaviour, FakeUpstream

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        reason = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            # CI must exercise the real browser, never skip it silently.
            pytest.fail(f"{reason}; they are missing in CI", pytrace=False)
        pytest.skip(reason)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="provhub-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,720",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page never showed what was expected")


def test_status_page_shows_providers_and_refreshes_live(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with (
        FakeUpstream(default=Behaviour(tokens=("ok",))) as good,
        FakeUpstream(default=Behaviour(status=500)) as bad,
    ):
        config = "\n".join(
            [
                FAST_ROUTER,
                provider_tables({"good": good}),
                provider_tables({"flaky": bad}, models=["flaky-model"]),
            ]
        )
        with Gateway(config) as gateway:
            for _ in range(2):
                requests.post(
                    gateway.base_url + "/chat/completions",
                    json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
                    timeout=5,
                ).raise_for_status()
            browser.get(gateway.url + "/")
            assert browser.title == "provhub gateway"

            def cells(name: str) -> list[str] | None:
                # Read a row in one script call: the page re-renders the table every 2 s,
                # so element handles held across calls go stale.
                found: list[str] | None = browser.execute_script(
                    "const r = document.querySelector(`tr[data-provider='${arguments[0]}']`);"
                    "return r ? Array.from(r.cells, c => c.innerText) : null;",
                    name,
                )
                return found

            good = wait_for(lambda: cells("good"))
            assert good[0] == "good"
            assert good[1] == "closed"
            assert "stream" in good[2]
            assert good[3] == "gpt-4"
            assert "(2)" in good[5]  # two recent samples with their p50 / p95
            assert "ms" in good[5]
            assert wait_for(lambda: cells("flaky"))[1] == "closed"

            # Break "flaky" (breaker threshold 3): the page shows it open without a reload.
            for _ in range(3):
                requests.post(
                    gateway.base_url + "/chat/completions",
                    json={"model": "flaky-model", "messages": [{"role": "user", "content": "x"}]},
                    timeout=5,
                )
            wait_for(lambda: (cells("flaky") or ["", ""])[1] == "open", timeout=8.0)
            assert browser.execute_script(
                "return document.querySelector(\"tr[data-provider='flaky'] .state\").className"
            ).split() == ["state", "open"]
            assert "providers" in browser.find_element(By.ID, "meta").text
            assert not browser.find_element(By.ID, "error").is_displayed()
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            assert browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 5000


def test_status_page_asks_for_a_key_when_the_server_requires_one(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with FakeUpstream() as upstream:
        config = "\n".join(
            [
                FAST_ROUTER,
                "[server]\napi_keys_env = 'GW_BROWSER_KEYS'\n",
                provider_tables({"only": upstream}),
            ]
        )
        with Gateway(config, env={"GW_BROWSER_KEYS": "sk-browser-key"}) as gateway:
            browser.get(gateway.url + "/")
            wait_for(lambda: browser.find_element(By.ID, "login").is_displayed())
            assert "needs an API key" in browser.find_element(By.ID, "error").text
            browser.find_element(By.ID, "key").send_keys("sk-browser-key")
            browser.find_element(By.CSS_SELECTOR, "#login button").click()
            wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-provider="only"]'))
            assert not browser.find_element(By.ID, "login").is_displayed()
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "status-page-key.png"))
