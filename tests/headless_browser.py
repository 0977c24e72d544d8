"""Debian's headless Chromium through Selenium, for the pages' browser tests (the report's explorer, the serve
operator page): one place for where the browser is, its options, and the rule that it may be missing locally (a
skip with one line) but not under CI=true (`.ci/run` installs it)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def find(paths: tuple[str, ...], name: str) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None) or shutil.which(name)


def headless_chromium() -> Iterator[object]:
    """A Chrome WebDriver on headless Chromium that keeps the page's console log (yielded, then quit)."""
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    binary, driver = find(CHROMIUM, "chromium"), find(DRIVER, "chromedriver")
    if webdriver is None or not binary or not driver:
        why = "no headless Chromium for the browser test (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
