"""A real headless browser for the end-to-end tests: Debian's Chromium driven by Selenium
through Debian's chromedriver (never one Selenium would download). Synchronous, as
Selenium is: tests call it through ``trio.to_thread.run_sync``.

:func:`browser_skip_reason` says why it cannot run; where ``CI`` is set a missing browser
is a failure (``.ci/run`` installs ``chromium`` and ``chromium-driver``), elsewhere a skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

CONTRAST_JS = Path(__file__).with_name("contrast.js")


def browser_skip_reason() -> str | None:
    """Why the browser cannot run here, None when it can."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the test extra)")
    if not missing:
        return None
    return f"needs {', '.join(missing)}: apt-get install chromium chromium-driver"


def require_browser() -> None:
    reason = browser_skip_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the browser is missing: {reason}")
    pytest.skip(reason)


def artifacts_dir(tmp_path: Path, name: str) -> Path:
    """Where a test keeps its screenshots: ``$AMBIT_TEST_ARTIFACTS/NAME`` if set, else
    under ``tmp_path`` (pytest keeps the last three runs' temporary directories)."""
    root = os.environ.get("AMBIT_TEST_ARTIFACTS")
    where = Path(root) / name if root else tmp_path / "artifacts"
    where.mkdir(parents=True, exist_ok=True)
    return where


class Browser:
    """One headless Chromium window."""

    def __init__(self, width: int = 1600, height: int = 1100) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={width},{height}",
            "--incognito",
        ):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)

    def close(self) -> None:
        self.driver.quit()

    def wait(self, seconds: float, check: Any, message: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, seconds, poll_frequency=0.25).until(check, message)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def active_id(self) -> str | None:
        found: str | None = self.js(
            "const a = document.activeElement;"
            " return a && a.getAttribute ? a.getAttribute('data-id') : null;"
        )
        return found

    def press(self, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(key).perform()

    def tab_to(self, element_id: str, limit: int = 80) -> int:
        """Press Tab until the element with ``data-id`` ``element_id`` has the focus (at
        most ``limit`` times, from the top of the page); how many presses it took."""
        from selenium.webdriver.common.keys import Keys

        self.js("document.activeElement && document.activeElement.blur(); window.focus();")
        self.driver.find_element("tag name", "body").click()
        for presses in range(1, limit + 1):
            self.press(Keys.TAB)
            if self.active_id() == element_id:
                return presses
        raise AssertionError(f"{element_id} never had the focus in {limit} Tabs")

    def contrast(self) -> tuple[list[dict[str, str]], int]:
        bad, checked = self.js(CONTRAST_JS.read_text())
        return bad, checked

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))
