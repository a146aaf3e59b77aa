"""Erasures survive a crash and restart of a real `erasure serve` process; damaged ones are never served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve(data_dir: Path, port: int) -> Iterator[str]:
    """`erasure serve` in a subprocess; killed with SIGKILL (a crash, not a clean shutdown) on exit."""
    env = {**os.environ, "ERASURE_DATA_DIR": str(data_dir), "ERASURE_DEVICE": "cpu", "ERASURE_LOG_LEVEL": "warning"}
    env["ERASURE_AUTH"] = "off"  # an open server must be asked for explicitly
    env.pop("ERASURE_API_KEYS", None)
    env.pop("ERASURE_API_KEYS_FILE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base_url, timeout=240)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"server did not become ready; stderr:\n{proc.communicate()[1][-4000:]}") from None
        yield base_url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_erasures_survive_a_crash_and_damaged_ones_are_not_served(tmp_path: Path) -> None:
    port = free_port()
    body = {"prompt": "a red circle", "seed": 42, "steps": 8}
    with serve(tmp_path, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        kept = client.post("/v1/erasures", json={"concept": "circle", "synonyms": ["disk"]}).json()["id"]
        damaged = client.post("/v1/erasures", json={"concept": "square"}).json()["id"]
        before = client.post("/v1/images/generations", json={**body, "erasures": [kept]}).json()["data"]

    artifact = tmp_path / "artifacts" / f"{damaged}.erasure"
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    (tmp_path / "artifacts" / f".{kept}.erasure.x1.tmp").write_bytes(b"half-written")

    with serve(tmp_path, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        got = client.get(f"/v1/erasures/{kept}").json()
        assert got["status"] == "ready"
        after = client.post("/v1/images/generations", json={**body, "erasures": [kept]}).json()["data"]
        assert after == before, "an erasure must give the same images after a restart"

        broken = client.get(f"/v1/erasures/{damaged}").json()
        assert broken["status"] == "failed" and broken["error"]["code"] == "artifact_corrupt"
        for response in (
            client.post("/v1/images/generations", json={**body, "erasures": [damaged]}),
            client.get(f"/v1/erasures/{damaged}/lora"),
        ):
            assert response.status_code == 409 and response.json()["error"]["code"] == "erasure_not_ready"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_embedded_job_resumes_from_its_checkpoint_after_a_crash(tmp_path: Path) -> None:
    """Without Redis, a trained job runs in the service; killing the service mid-job loses nothing: the restarted
    service resumes it from its last checkpoint and publishes it once."""
    port = free_port()
    options = {"steps": 24, "checkpoint_every": 3, "concept_images": 1, "sample_steps": 2, "batch_size": 1}
    checkpoint = tmp_path / "checkpoints"
    with serve(tmp_path, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        job = client.post("/v1/erasures", json={"concept": "cross", "method": "eraseanything", "options": options})
        assert job.status_code == 202, job.text
        erasure_id = job.json()["id"]
        deadline = time.monotonic() + 240
        while not (client.get(f"/v1/erasures/{erasure_id}").json()["step"] >= 7 and any(checkpoint.iterdir())):
            assert time.monotonic() < deadline, "the job did not reach a checkpoint"
            time.sleep(0.2)

    with serve(tmp_path, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.monotonic() + 240
        erasure = client.get(f"/v1/erasures/{erasure_id}").json()
        while erasure["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, erasure
            time.sleep(0.2)
            erasure = client.get(f"/v1/erasures/{erasure_id}").json()
        assert erasure["status"] == "ready", erasure
        assert erasure["attempts"] == 2 and erasure["resumed_from_step"] >= 6 and erasure["resumed_from_step"] % 3 == 0
        assert erasure["step"] == 24
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [f"{erasure_id}.erasure"]
    assert not any(checkpoint.iterdir())
