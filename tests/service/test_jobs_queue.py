"""Trained erasure jobs on the real Redis queue: the API enqueues, separate `erasure worker` processes execute.

Each test uses its own key prefix on the local Redis (127.0.0.1:6379), so runs never see each other's jobs.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from service.jobs.redis_queue import JOB_FUNCTION
from service.jobs.worker import check_worker
from service.settings import Settings

from .conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE_S = 2.0
# Tiny EraseAnything++ settings: a step takes well under a second on the demo world.
FAST = {"concept_images": 1, "sample_steps": 2, "batch_size": 1}


def lora_job(concept: str, steps: int, checkpoint_every: int | None = None) -> dict[str, Any]:
    """A tiny EraseAnything++ job; `checkpoint_every` left out is the default's, capped at `steps`."""
    options: dict[str, Any] = {**FAST, "steps": steps}
    if checkpoint_every is not None:
        options["checkpoint_every"] = checkpoint_every
    return {"concept": concept, "method": "eraseanything", "options": options}


class Worker:
    """`erasure worker` in a subprocess with the test's data folder, Redis prefix and a short lease."""

    def __init__(self, data_dir: Path, prefix: str, **env: str) -> None:
        environment = {
            **os.environ,
            "ERASURE_REDIS_URL": REDIS_URL,
            "ERASURE_QUEUE_PREFIX": prefix,
            "ERASURE_DATA_DIR": str(data_dir),
            "ERASURE_DEVICE": "cpu",
            "ERASURE_AUTH": "off",
            "ERASURE_JOB_LEASE_S": str(LEASE_S),
            "ERASURE_LOG_LEVEL": "info",
            **env,
        }
        self.log = data_dir / f"worker-{secrets.token_hex(3)}.log"
        self._log_handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=ROOT,
            env=environment,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()
        self._log_handle.close()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture
def queue_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A key prefix of its own on the real Redis, removed afterwards."""
    prefix = f"erasure-test-{secrets.token_hex(4)}-"
    conn = redis.Redis.from_url(REDIS_URL)
    conn.ping()
    yield {"prefix": prefix, "data_dir": tmp_path, "conn": conn}
    for key in conn.scan_iter(f"{prefix}*"):
        conn.delete(key)
    for key in conn.scan_iter(f"rq:*{prefix}*"):  # rq's queue and registry keys of our queues
        conn.delete(key)
    for record in (tmp_path / "records").glob("er_*.json"):
        for key in conn.scan_iter(f"rq:*{record.stem}*"):  # rq's job hashes
            conn.delete(key)


@pytest.fixture
def workers(queue_env: dict[str, Any]) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker(queue_env["data_dir"], queue_env["prefix"], **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def api(start_server: Callable[..., LiveServer], queue_env: dict[str, Any]) -> LiveServer:
    return start_server(
        queue_env["data_dir"], redis_url=REDIS_URL, queue_prefix=queue_env["prefix"], job_lease_s=LEASE_S
    )


def wait_for(
    client: httpx.Client, erasure_id: str, until: Callable[[dict[str, Any]], bool], timeout: float, why: str = ""
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    erasure = client.get(f"/v1/erasures/{erasure_id}").json()
    while not until(erasure):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting ({why}): {erasure}")
        time.sleep(0.2)
        erasure = client.get(f"/v1/erasures/{erasure_id}").json()
    return erasure


@pytest.mark.slow
def test_job_runs_on_a_separate_worker_process(api: LiveServer, workers: Callable[..., Worker]) -> None:
    with api.client() as client:
        response = client.post("/v1/erasures", json=lora_job("cross", steps=4))
        assert response.status_code == 202, response.text
        erasure_id = response.json()["id"]
        time.sleep(1.5)  # no worker yet: the API does not run queued jobs itself
        assert client.get(f"/v1/erasures/{erasure_id}").json()["status"] == "queued"

        worker = workers()
        erasure = wait_for(client, erasure_id, lambda e: e["status"] not in ("queued", "running"), 240, worker.tail())
        assert erasure["status"] == "ready", (erasure, worker.tail())
        assert erasure["step"] == erasure["total_steps"] == 4 and erasure["progress"] == 1.0
        assert {"esd", "loss"} <= set(erasure["losses"]) and erasure["eta_s"] == 0.0
        assert erasure["metadata"]["stats"]["steps"] == 4
        image = client.post(
            "/v1/images/generations", json={"prompt": "a red cross", "seed": 1, "erasures": [erasure_id]}
        )
        assert image.status_code == 200 and image.json()["erasures"] == [erasure_id]
    assert f"erasure {erasure_id}: succeeded" in worker.tail()


@pytest.mark.slow
def test_killed_worker_job_resumes_from_its_checkpoint(
    api: LiveServer, workers: Callable[..., Worker], queue_env: dict[str, Any]
) -> None:
    data_dir: Path = queue_env["data_dir"]
    with api.client() as client:
        erasure_id = client.post("/v1/erasures", json=lora_job("square", steps=30, checkpoint_every=3)).json()["id"]
        first = workers()
        checkpoint = data_dir / "checkpoints" / f"{erasure_id}.ckpt"
        wait_for(client, erasure_id, lambda e: e["step"] >= 7 and checkpoint.is_file(), 240, first.tail())
        first.kill()
        killed_at = client.get(f"/v1/erasures/{erasure_id}").json()
        assert killed_at["status"] == "running" and killed_at["step"] < 30

        second = workers()
        erasure = wait_for(client, erasure_id, lambda e: e["status"] not in ("queued", "running"), 240, second.tail())
        assert erasure["status"] == "ready", (erasure, second.tail())
        assert erasure["attempts"] == 2
        assert erasure["resumed_from_step"] is not None and erasure["resumed_from_step"] >= 6
        assert erasure["resumed_from_step"] % 3 == 0  # a checkpointed step
        # Published exactly once: one artifact, no staged leftovers, checkpoint gone.
        assert sorted(p.name for p in (data_dir / "artifacts").iterdir()) == [f"{erasure_id}.erasure"]
        assert not checkpoint.exists()
        lora = client.get(f"/v1/erasures/{erasure_id}/lora")
        assert lora.status_code == 200
    assert "resumes from its checkpoint" in second.tail()


@pytest.mark.slow
def test_job_whose_workers_keep_dying_fails_instead_of_running_forever(
    start_server: Callable[..., LiveServer], workers: Callable[..., Worker], queue_env: dict[str, Any]
) -> None:
    api = start_server(
        queue_env["data_dir"],
        redis_url=REDIS_URL,
        queue_prefix=queue_env["prefix"],
        job_lease_s=LEASE_S,
        job_max_attempts=1,
    )
    with api.client() as client:
        erasure_id = client.post("/v1/erasures", json=lora_job("circle", steps=500)).json()["id"]
        worker = workers(ERASURE_JOB_MAX_ATTEMPTS="1")
        wait_for(client, erasure_id, lambda e: e["step"] >= 1, 240, worker.tail())
        worker.kill()
        erasure = wait_for(client, erasure_id, lambda e: e["status"] == "failed", 30, "the API's reaper")
        assert erasure["error"]["code"] == "worker_lost"


@pytest.mark.slow
def test_cancel_stops_the_job_and_frees_the_worker(
    api: LiveServer, workers: Callable[..., Worker], queue_env: dict[str, Any]
) -> None:
    with api.client() as client:
        long_id = client.post("/v1/erasures", json=lora_job("diamond", steps=5000, checkpoint_every=2)).json()["id"]
        worker = workers()
        wait_for(client, long_id, lambda e: e["status"] == "running" and e["step"] >= 2, 240, worker.tail())

        cancelled = client.delete(f"/v1/erasures/{long_id}")
        assert cancelled.status_code == 200
        assert cancelled.json() == {"id": long_id, "object": "erasure", "deleted": False, "status": "cancelled"}
        assert client.get(f"/v1/erasures/{long_id}").json()["status"] == "cancelled"

        short_id = client.post("/v1/erasures", json=lora_job("cross", steps=2)).json()["id"]
        short = wait_for(client, short_id, lambda e: e["status"] not in ("queued", "running"), 120, worker.tail())
        assert short["status"] == "ready", worker.tail()
        final = client.get(f"/v1/erasures/{long_id}").json()
        assert final["status"] == "cancelled" and final["step"] < 5000
        assert not (queue_env["data_dir"] / "checkpoints" / f"{long_id}.ckpt").exists()
        assert not (queue_env["data_dir"] / "artifacts" / f"{long_id}.erasure").exists()
        assert client.delete(f"/v1/erasures/{long_id}").json()["status"] == "deleted"
        assert client.get(f"/v1/erasures/{long_id}").status_code == 404
    assert f"erasure {long_id}: cancelled" in worker.tail()


@pytest.mark.slow
def test_redis_unreachable_refuses_lora_jobs_while_ice_and_generation_work(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    api = start_server(tmp_path, redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5)
    with api.client() as client:
        refused = client.post("/v1/erasures", json=lora_job("cross", steps=2))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_unavailable"
        assert client.get("/v1/erasures").json()["data"] == []  # nothing was written

        ice = client.post("/v1/erasures", json={"concept": "triangle", "method": "ice"})
        assert ice.status_code == 201 and ice.json()["status"] == "ready"
        image = client.post(
            "/v1/images/generations", json={"prompt": "a red triangle", "seed": 2, "erasures": [ice.json()["id"]]}
        )
        assert image.status_code == 200


def _settings(queue_env: dict[str, Any], **overrides: Any) -> Settings:
    values = {"redis_url": REDIS_URL, "queue_prefix": queue_env["prefix"], "auth": "off", **overrides}
    return Settings(data_dir=queue_env["data_dir"], **values)


def test_worker_health_check_without_a_worker(queue_env: dict[str, Any]) -> None:
    """`erasure worker --check` fails while no worker of this host serves the deployment's queues, or Redis is away."""
    assert "no worker of this host" in (check_worker(_settings(queue_env)) or "")
    unreachable = check_worker(_settings(queue_env, redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5))
    assert unreachable is not None and "unreachable" in unreachable
    env = {**os.environ, "ERASURE_REDIS_URL": REDIS_URL, "ERASURE_QUEUE_PREFIX": queue_env["prefix"]}
    env["ERASURE_AUTH"] = "off"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "unhealthy" in result.stderr, result.stderr


def _wait_for_rq(job: Job, timeout: float, why: str) -> str:
    deadline = time.monotonic() + timeout
    while (status := job.get_status(refresh=True)) in (RqStatus.QUEUED, RqStatus.STARTED):
        assert time.monotonic() < deadline, f"timed out waiting ({why}): {status}"
        time.sleep(0.2)
    return status


@pytest.mark.slow
def test_worker_runs_only_the_projects_job_function(
    api: LiveServer, workers: Callable[..., Worker], queue_env: dict[str, Any]
) -> None:
    """rq would import and call any function a job in Redis names: the worker fails every other job without running
    it, and keeps serving real jobs. Its health check passes while it runs."""
    worker = workers()
    settings = _settings(queue_env)
    deadline = time.monotonic() + 240
    while check_worker(settings) is not None:  # registered once its pipeline is loaded
        assert time.monotonic() < deadline and worker.proc.poll() is None, worker.tail()
        time.sleep(0.5)
    marker = queue_env["data_dir"] / "executed"
    queue = Queue(f"{queue_env['prefix']}flux", connection=queue_env["conn"], serializer=JSONSerializer)
    foreign = [
        queue.enqueue_call("os.system", args=(f"touch {marker}",)),
        queue.enqueue_call("pathlib.Path.touch", args=(str(marker),)),
        queue.enqueue_call(JOB_FUNCTION, args=("../../etc/passwd",)),  # ours, but not an erasure id
    ]
    for job in foreign:
        assert _wait_for_rq(job, 60, worker.tail()) == RqStatus.FAILED, worker.tail()
    assert not marker.exists(), "the worker ran a job that is not the project's"
    assert worker.proc.poll() is None, worker.tail()
    assert worker.tail().count("refusing rq job") == len(foreign)
    assert check_worker(settings) is None
    with api.client() as client:  # and it still runs real jobs
        erasure_id = client.post("/v1/erasures", json=lora_job("cross", steps=2)).json()["id"]
        erasure = wait_for(client, erasure_id, lambda e: e["status"] not in ("queued", "running"), 240, worker.tail())
        assert erasure["status"] == "ready", worker.tail()
