"""Headless Chromium for the page tests: Debian's `chromium` + `chromium-driver` driven by
Selenium. Tests call `chrome()` and skip, saying why, when either binary is missing
(`.ci/run` installs them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1600")


def binaries() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


@contextlib.contextmanager
def chrome():
    """A fresh headless Chromium (its own --user-data-dir) with the browser log on."""
    browser, driver_path = binaries()
    if not browser or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mmsa-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """SEVERE entries of the browser log since the last call (console errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $MMSA_TEST_ARTIFACTS if set, else the test's tmp_path."""
    d = Path(os.environ.get("MMSA_TEST_ARTIFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = artifacts(tmp_path) / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait(driver, script: str, timeout: float = 60.0, what: str = "the page"):
    """Poll a JS expression until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {script}"))
    except Exception:
        pytest.fail(f"timed out after {timeout:g} s waiting for {what} ({script}); "
                    f"browser log: {driver.get_log('browser')}")
