"""The status page in a real browser: Debian's headless ``chromium`` driven through
``chromium-driver`` by Selenium, on the page of a running ``ingest run`` against the
emulator while drops arrive.

Selenium rather than Playwright: Debian ships ``chromium`` and ``chromium-driver`` from
one source package, so the driver always matches the browser, and Selenium is a pure
Python client (Playwright brings a Node.js driver of its own and supports only the
browser builds it downloads). Without them the test skips on a developer's machine and
fails in CI (``tests/unprivileged.py``); ``.ci/run`` installs them.

The screenshot is kept under the test's ``tmp_path`` and, when ``INGEST_TEST_ARTIFACTS``
names a folder, copied there; its path is printed (``pytest -s`` or the failure report).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.deployment import Deployment
from .support.http import daemon, enable_http
from .unprivileged import cannot_run_here

#: seconds any one thing the browser should see may take, on a loaded 2-core machine
PATIENCE = 60.0
#: each archive at the emulator takes this long at least, so that the page (refreshed
#: every 3 s) shows the drops in flight before they complete
REQUEST_SECONDS = 8
CLIPS = ["clip0.mxf", "clip1.mxf", "clip2.mxf"]
#: matched by a rule whose media DIVA does not have: refused with 1017
REFUSED = "refused.mov"

#: each row of a section's table, as lists of cell texts (one call: the script swaps the
#: sections' HTML in, so elements found in one call may be gone by the next)
ROWS_JS = """
var rows = document.querySelectorAll('#' + arguments[0] + ' tbody tr');
return Array.prototype.map.call(rows, function (tr) {
  return Array.prototype.map.call(tr.cells, function (td) { return td.textContent.trim(); });
});
"""


def chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or the test cannot run here (fails in CI)."""
    try:
        import selenium  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the dev extras install it
        cannot_run_here(f"selenium is not installed ({exc}): pip install -e '.[dev]'")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        cannot_run_here(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    return browser, driver


def browser(tmp_path: Path, scripts: bool = True) -> Any:
    """A headless Chromium through chromium-driver; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    if not scripts:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    # The driver's path given: Selenium Manager never looks for (or downloads) another one.
    log = tmp_path / f"chromedriver-{'scripts' if scripts else 'noscripts'}.log"
    service = Service(executable_path=driver, log_output=str(log))
    found = webdriver.Chrome(options=options, service=service)
    found.set_page_load_timeout(PATIENCE)
    return found


@contextlib.contextmanager
def opened(tmp_path: Path, scripts: bool = True) -> Iterator[Any]:
    driver = browser(tmp_path, scripts)
    try:
        yield driver
    finally:
        driver.quit()


def keep_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save what the browser shows as ``name``; copied to ``$INGEST_TEST_ARTIFACTS`` too."""
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), "the browser took no screenshot"
    artifacts = os.environ.get("INGEST_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy2(shot, Path(artifacts) / name))
    print(f"screenshot of the status page: {shot}")
    return shot


def rows(driver: Any, section: str) -> list[list[str]]:
    """The cell texts of each row of ``section``'s table ([] while it shows no table)."""
    found: list[list[str]] = driver.execute_script(ROWS_JS, section)
    return found


def until(driver: Any, condition: Any, message: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PATIENCE, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {message} within {PATIENCE:g} s") from None


# two browsers, three archives of 8 s and the waits of a loaded 2-core machine
@pytest.mark.timeout(240)
def test_the_page_shows_drops_arrive_and_complete_without_a_reload(
    deployment: Deployment, tmp_path: Path
) -> None:
    chromium()  # before anything starts: skipped (or failed, in CI) at once without it
    dep = deployment
    dep.rule()
    dep.rule("nomedia", match=["**/*.mov"], media="NO_SUCH_MEDIA")
    enable_http(dep)
    dep.knobs(request_seconds=REQUEST_SECONDS)
    with daemon(dep) as url, opened(tmp_path) as driver:
        try:
            driver.get(url)
            # The script has run (it stamps each refresh), and nothing has arrived yet.
            until(
                driver,
                lambda d: d.find_element("id", "stamp").text.startswith("updated"),
                "its own refresh",
            )
            assert rows(driver, "latest") == []
            driver.execute_script("window.ingestTestMarker = 'not reloaded';")

            for name in [*CLIPS, REFUSED]:
                (dep.watch / name).write_bytes(name.encode())

            # Each clip shows up (latest drops: id, watch, path, rule, state, object, when)
            # before it completes: every state the page showed is kept.
            seen: dict[str, set[str]] = {name: set() for name in CLIPS}

            def every_clip_completed(d: Any) -> bool:
                for row in rows(d, "latest"):
                    if row[2] in seen:
                        seen[row[2]].add(row[4])
                return all("COMPLETED" in states for states in seen.values())

            until(driver, every_clip_completed, f"{CLIPS} COMPLETED")
            for name, states in seen.items():
                assert states - {"COMPLETED"}, f"{name} was never shown before it completed"

            # The refusal, with DIVA's code (id, state, rule, watch, path, code, reason, when).
            def refusal(d: Any) -> list[str] | None:
                return next((r for r in rows(d, "failures") if r[4] == REFUSED), None)

            row = until(driver, refusal, f"{REFUSED} among the refusals")
            assert row[1] == "REJECTED" and row[2] == "nomedia" and row[5] == "1017", row
            assert "NO_SUCH_MEDIA" in row[6], row

            assert driver.execute_script("return window.ingestTestMarker") == "not reloaded"
            # One navigation, and not a reload of it.
            navigations = driver.execute_script(
                "return performance.getEntriesByType('navigation').map(n => n.type)"
            )
            assert navigations == ["navigate"]
        except BaseException:
            # What the page showed when it went wrong, without hiding why it did.
            with contextlib.suppress(Exception):
                keep_screenshot(driver, tmp_path, "status-page-failed.png")
            raise
        keep_screenshot(driver, tmp_path, "status-page.png")

        # The ledger agrees with what the page showed.
        for name in CLIPS:
            assert dep.rows(name)[-1]["state"] == "COMPLETED"
        refused = dep.rows(REFUSED)[-1]
        assert refused["state"] == "REJECTED" and refused["status_code"] == 1017

        # With scripts off the page is still whole, rendered by the server.
        with opened(tmp_path, scripts=False) as static:
            static.get("data:text/html,<title>off</title><script>document.title='on'</script>")
            assert static.title == "off", "this browser runs scripts"
            static.get(url)
            stamp = static.find_element("id", "stamp").text
            assert stamp == "rendered by the server; reload to refresh"
            cells = [
                [td.text for td in tr.find_elements("tag name", "td")]
                for tr in static.find_elements("css selector", "#latest tbody tr")
            ]
            assert {(r[2], r[4]) for r in cells} == {
                *((name, "COMPLETED") for name in CLIPS),
                (REFUSED, "REJECTED"),
            }
            failures = static.find_elements("css selector", "#failures tbody tr")
            assert len(failures) == 1 and "1017" in failures[0].text
