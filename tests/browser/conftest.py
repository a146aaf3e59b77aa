"""A real browser against the running service: Debian's chromium and chromium-driver, headless, driven by selenium.

The service is built as `erasure serve` builds it (`create_app`, uvicorn on a free localhost port, real HTTP), on
the demo Flux world with the in-process job runner, auth on with one API key. The CI installs chromium when it is
missing (.ci/run); elsewhere these tests are skipped, saying why, when no browser is installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.pipelines import PipelineHandle, PipelinePool, read_defaults
from service.settings import Settings
from tests.service.conftest import LiveServer

API_KEY = "playground-key-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Screenshots go where CI can pick them up; the folder is gitignored.
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output" / "browser"


@pytest.fixture(scope="module")
def playground_server(demo_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(device="cpu", dtype="float32", auth="off")
    pool = PipelinePool({"flux": PipelineHandle("flux", demo_engine, read_defaults(demo_engine, settings, "flux"))})
    data_dir = tmp_path_factory.mktemp("playground-data")
    server = LiveServer(Settings(data_dir=data_dir, device="cpu", api_keys={API_KEY: "player"}), pool).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"no browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
