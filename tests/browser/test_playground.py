"""The playground page in a real headless browser against the running service: enter a key, create an ICE erasure
and a short EraseAnything++ job, see the job's progress arrive over server-sent events, generate without and with
the erasure side by side, request a report and see its grid; a screenshot is written to test-output/browser/."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.service.conftest import LiveServer

from .conftest import API_KEY, OUTPUT_DIR

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# A short EraseAnything++ job (as in tests/service/test_api.py): a few seconds here, several progress writes.
# Long enough that the page sees the job running: since mining went through the reading index, a 30-step job could
# finish before the page opened its event stream (CI saw no running event once).
FAST_JOB = {"steps": 90, "concept_images": 1, "sample_steps": 2, "checkpoint_every": 10}
REPORTS_ROUTE = "/v1/erasures/{erasure_id}/reports"


def wait(driver: Any, condition: Any, timeout: float = 60.0, what: str = "") -> Any:
    """Waits for `condition(driver)` to be truthy; on timeout, fails with the page's message line."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except Exception as e:
        message = driver.find_element(By.ID, "message").text
        raise AssertionError(f"timed out waiting for {what} (page says: {message!r})") from e


def fill(driver: Any, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def loaded_images(driver: Any, container: str) -> int:
    """How many images in `container` the browser has decoded (a broken image has no natural width)."""
    script = f"return [...document.querySelectorAll('#{container} img')].filter(i => i.naturalWidth > 0).length"
    return int(driver.execute_script(script))


def create(driver: Any, concept: str, method: str, options: dict[str, Any] | None = None) -> str:
    before = driver.find_element(By.ID, "message").text
    fill(driver, "concept", concept)
    Select(driver.find_element(By.ID, "method")).select_by_value(method)
    fill(driver, "options", json.dumps(options or {}))
    driver.find_element(By.ID, "create-btn").click()
    message = wait(
        driver,
        lambda d: (text := d.find_element(By.ID, "message").text).startswith("created ") and text != before and text,
        what=concept,
    )
    return str(message.split()[1])


def erasure_events(driver: Any) -> list[dict[str, Any]]:
    items = driver.find_elements(By.CSS_SELECTOR, "#event-log li[data-event='erasure']")
    return [json.loads(item.text.split(" ", 2)[2]) for item in items]


def test_page_and_assets_are_served_from_here(playground_server: LiveServer) -> None:
    with playground_server.client() as client:  # the page itself needs no key: it holds no data
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/", "/static/playground.js", "/static/style.css"):
            text = client.get(asset).text
            assert "http://" not in text and "https://" not in text  # no CDN, nothing from another origin
        assert client.get("/static/missing.js").status_code == 404


def test_playground_end_to_end(playground_server: LiveServer, browser: Any) -> None:
    driver = browser
    started = time.monotonic()
    driver.get(playground_server.base_url + "/")
    assert driver.title == "Concept erasure playground"
    fill(driver, "api-key", API_KEY)
    driver.find_element(By.ID, "save-key").click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), what="the model list")

    # An ICE erasure: ready at once, ticked for generation.
    ice_id = create(driver, "triangle", "ice")
    row = f"#erasure-list tr[data-id='{ice_id}']"
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "ready", what="ICE")

    # Without and with it, side by side.
    fill(driver, "gen-prompt", "a red triangle")
    fill(driver, "gen-n", "2")
    driver.find_element(By.ID, "gen-btn").click()
    wait(
        driver,
        lambda d: loaded_images(d, "before-images") == 2 and loaded_images(d, "after-images") == 2,
        what="both image sets",
    )
    assert ice_id in driver.find_element(By.ID, "after-set").text

    # A trained job: its progress arrives over SSE while it runs.
    job_id = create(driver, "circle", "eraseanything", FAST_JOB)
    wait(driver, lambda d: d.find_element(By.ID, "progress-status").text == "ready", timeout=120, what="the job")
    events = erasure_events(driver)
    assert all(event["id"] == job_id for event in events)
    running = [e for e in events if e["status"] == "running" and e["step"] > 0]
    assert len(running) >= 2 and running[-1]["losses"], events
    assert [e["step"] for e in events] == sorted(e["step"] for e in events)
    assert "step 90/90" in driver.find_element(By.ID, "progress-detail").text

    try:
        _report(driver, playground_server, ice_id)
    finally:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        screenshot = OUTPUT_DIR / "playground.png"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 200, 6000))  # the whole page on one screenshot
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {screenshot}; page flow took {time.monotonic() - started:.1f} s")
    assert not [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _report(driver: Any, server: LiveServer, erasure_id: str) -> None:
    """Requests a report on the ICE erasure (one seed, no attack: the quick kind) and waits for its grid."""
    with server.client(API_KEY) as client:
        if client.get(REPORTS_ROUTE.format(erasure_id=erasure_id)).status_code != 200:
            pytest.skip(f"reports are not served by this build ({REPORTS_ROUTE} missing)")
    driver.find_element(By.CSS_SELECTOR, f"#erasure-list tr[data-id='{erasure_id}']").click()
    fill(driver, "report-seeds", "1")
    if driver.find_element(By.ID, "report-attack").is_selected():
        driver.find_element(By.ID, "report-attack").click()
    driver.find_element(By.ID, "report-btn").click()
    wait(driver, lambda d: loaded_images(d, "report-section") >= 1, timeout=300, what="the report grid")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#report-figures tr")) >= 2  # a header and the target rates
    # Its progress came over the erasure's event stream too.
    assert driver.find_elements(By.CSS_SELECTOR, "#event-log li[data-event='report']")
    assert driver.find_element(By.ID, "report-status").text in {"succeeded", "ready"}
