"""A client that goes away before its generation starts: the work is dropped, never run, and its slot is freed."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import LiveServer


def counter(client: httpx.Client, name: str) -> float:
    match = re.search(rf'^{name}{{model="flux"}} (\S+)$', client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_disconnected_clients_queued_generation_is_dropped(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = start_server(tmp_path)
    runtime = server.runtime
    scheduler = runtime.schedulers["flux"]
    body = {"prompt": "a red circle", "steps": 2, "seed": 1}
    try:
        with server.client() as client:
            generated = counter(client, "erasure_generations_total")
            # The pipeline is busy: hold its lock, so the first request is taken up and waits for it.
            with runtime.pool.get("flux").lock:
                first: dict = {}
                thread = threading.Thread(
                    target=lambda: first.update(r=client.post("/v1/images/generations", json=body))
                )
                thread.start()
                time.sleep(1.0)  # the worker has picked the first request and waits on the lock
                assert scheduler.depth == 0
                # The second waits in the queue; its client gives up after 1 s and closes the connection.
                with httpx.Client(base_url=server.base_url, timeout=1.0) as impatient:
                    with pytest.raises(httpx.ReadTimeout):
                        impatient.post("/v1/images/generations", json={**body, "seed": 2})
                wait_for(lambda: scheduler.depth == 0)  # dropped from the queue while the pipeline is still busy
                assert counter(client, "erasure_generations_dropped_total") == 1
            thread.join(timeout=60)
            assert first["r"].status_code == 200, first["r"].text
            time.sleep(0.5)
            assert counter(client, "erasure_generations_total") == generated + 1  # the dropped one never ran
            assert client.post("/v1/images/generations", json=body).status_code == 200  # the service goes on
    finally:
        server.stop()
