"""Shared fixtures: the demo pipeline loaded once per session, and live servers over real HTTP on localhost."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from service.main import create_app
from service.pipelines import PipelineHandle, PipelinePool, read_defaults
from service.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{base_url}/readyz", timeout=5)
            if last.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready in {timeout} s (last answer: {last and last.text})")


class LiveServer:
    """A uvicorn server in a background thread, on a free localhost port."""

    def __init__(self, settings: Settings, pool: PipelinePool | None) -> None:
        self.settings = settings
        self.app = create_app(settings, pool)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def start(self) -> LiveServer:
        self.thread.start()
        wait_ready(self.base_url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, key: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def async_client(self, key: str | None = None, timeout: float = 300.0) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits)


@pytest.fixture(scope="session")
def demo_pool(request: pytest.FixtureRequest) -> PipelinePool:
    """The Flux pipeline, loaded once per session: the suite's demo engine (tests/conftest.py), or the folder
    ERASURE_FLUX_MODEL names."""
    settings = Settings(device="cpu", dtype="float32", auth="off")
    if settings.flux_model != "demo":
        return PipelinePool.load(settings)
    engine = request.getfixturevalue("demo_engine")
    return PipelinePool({"flux": PipelineHandle("flux", engine, read_defaults(engine, settings, "flux"))})


@pytest.fixture(scope="session")
def start_server(demo_pool: PipelinePool) -> Iterator[Callable[..., LiveServer]]:
    """Starts live servers sharing the demo pipeline; each stops at the end of the session (or when asked)."""
    started: list[LiveServer] = []

    def start(data_dir: Path, **overrides: Any) -> LiveServer:
        """A server on `data_dir`; open (auth off, explicitly) unless `overrides` configure API keys."""
        if "api_keys" not in overrides and "api_keys_file" not in overrides:
            overrides.setdefault("auth", "off")
        settings = Settings(data_dir=data_dir, device="cpu", **overrides)
        server = LiveServer(settings, demo_pool).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def open_server(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server with the embedded defaults and auth off (no API keys), one per test module."""
    server = start_server(tmp_path_factory.mktemp("open-data"))
    yield server
    server.stop()


def decode_png(b64: str) -> torch.Tensor:
    """A base64 PNG from the API as a float image [3, H, W] in [0, 1]."""
    import numpy as np
    from PIL import Image

    array = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype="float32") / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)
