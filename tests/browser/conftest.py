"""Headless Chromium for the browser tests, driven by selenium with explicit binary paths.

One browser per test session (`browser` fixture), always quit at the end. Selenium Manager is
never used: the driver path is given, so nothing is downloaded. Tests skip only when the
chromium or chromedriver binary or the selenium package is missing (`.ci/install-browser`
installs the binaries); any other start-up failure is an error. Paths can be overridden with
VLMINTERP_CHROMIUM and VLMINTERP_CHROMEDRIVER.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("VLMINTERP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VLMINTERP_CHROMEDRIVER", "/usr/bin/chromedriver")
SKIP_REASON = "no headless Chromium: apt-get install chromium chromium-driver (.ci/run installs them)"
WINDOW = (1400, 900)


def _missing() -> list[str]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python package selenium")
    return missing


@pytest.fixture(scope="session")
def browser():
    missing = _missing()
    if missing:
        pytest.skip(f"{SKIP_REASON}; missing: {', '.join(missing)}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vlminterp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
