"""More than one machine: API replicas and job workers share one Redis for the queue and the erasure store.

The end-to-end test starts two `erasure serve` replicas and two `erasure worker`s as separate processes, each with a
data folder of its own (so nothing can pass through a shared folder), `ERASURE_STORE=redis` and a key prefix of its
own on the local Redis (127.0.0.1:6379). The store tests below it run the Redis store alone against the same Redis.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.errors import ArtifactError
from service.errors import StoreUnavailableError
from service.settings import Settings
from service.store import ErasureRecord, ErasureStore, JobStatus, RecordFinishedError, StaleAttemptError, new_id
from service.store_redis import RedisErasureStore, StoreKeys, open_store

from .conftest import LiveServer, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE_S = 2.0
FAST = {"concept_images": 1, "sample_steps": 2, "batch_size": 1}  # a tiny EraseAnything++ (as in test_jobs_queue)
PROMPT = {"prompt": "a red triangle", "seed": 7, "steps": 4}


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of its own on the real Redis; every key under it (and rq's keys of its queues) removed after."""
    name = f"erasure-replicas-{secrets.token_hex(4)}-"
    conn = redis.Redis.from_url(REDIS_URL)
    conn.ping()
    yield name
    for pattern in (f"{name}*", f"rq:*{name}*"):
        for key in conn.scan_iter(pattern):
            conn.delete(key)
    conn.close()


class Process:
    """`erasure serve` or `erasure worker` in a subprocess on the shared Redis."""

    def __init__(self, args: list[str], deployment: Deployment, name: str) -> None:
        env = {
            **os.environ,
            "ERASURE_STORE": deployment.store,
            "ERASURE_REDIS_URL": REDIS_URL,
            "ERASURE_QUEUE_PREFIX": deployment.prefix,
            "ERASURE_DATA_DIR": str(deployment.data_dir(name)),
            "ERASURE_DEVICE": "cpu",
            "ERASURE_AUTH": "off",
            "ERASURE_JOB_LEASE_S": str(LEASE_S),
            "ERASURE_LOG_LEVEL": "info",
        }
        env.pop("ERASURE_API_KEYS", None)
        env.pop("ERASURE_API_KEYS_FILE", None)
        self.log = deployment.root / f"{name}.log"
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()
        self._log.close()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


class Deployment:
    """Replicas and workers of one store kind: `redis` (each process has a data folder of its own, so nothing can
    pass through a folder) or `file` (all share one folder, as on one machine or a shared filesystem)."""

    def __init__(self, root: Path, store: str, prefix: str, stack: ExitStack) -> None:
        self.root, self.store, self.prefix, self.stack = root, store, prefix, stack
        self.conn = redis.Redis.from_url(REDIS_URL)
        stack.callback(self.conn.close)
        self.keys = StoreKeys(prefix)

    def data_dir(self, name: str) -> Path:
        folder = self.root / (name if self.store == "redis" else "shared")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def start(self, args: list[str], name: str) -> Process:
        process = Process(args, self, name)
        self.stack.callback(process.stop)
        return process

    def serve(self, name: str) -> str:
        port = free_port()
        self.start(["serve", "--host", "127.0.0.1", "--port", str(port)], name)
        return f"http://127.0.0.1:{port}"

    def has_checkpoint(self, erasure_id: str) -> bool:
        if self.store == "redis":
            return self.conn.exists(self.keys.checkpoint(erasure_id)) == 1
        return (self.data_dir("") / "checkpoints" / f"{erasure_id}.ckpt").is_file()

    def has_artifact(self, erasure_id: str) -> bool:
        if self.store == "redis":
            return self.conn.exists(self.keys.artifact(erasure_id)) == 1
        return (self.data_dir("") / "artifacts" / f"{erasure_id}.erasure").is_file()


def generate(client: httpx.Client, erasures: list[str], steps: int = PROMPT["steps"]) -> httpx.Response:
    return client.post("/v1/images/generations", json={**PROMPT, "steps": steps, "erasures": erasures})


def images(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["b64_json"] for item in response.json()["data"]]


def wait_for(client: httpx.Client, erasure_id: str, until: Callable[[dict[str, Any]], bool], why: str) -> dict:
    deadline = time.monotonic() + 300
    erasure = client.get(f"/v1/erasures/{erasure_id}").json()
    while not until(erasure):
        assert time.monotonic() < deadline, f"timed out ({erasure}): {why}"
        time.sleep(0.2)
        erasure = client.get(f"/v1/erasures/{erasure_id}").json()
    return erasure


@pytest.fixture(scope="module")
def solo_ice(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], list[str]]:
    """A one-process deployment (file store, embedded runner): images without and with a fresh ICE erasure."""
    solo = start_server(tmp_path_factory.mktemp("solo"))
    try:
        with solo.client() as client:
            erasure = client.post("/v1/erasures", json={"concept": "triangle", "method": "ice"}).json()
            assert erasure["status"] == "ready", erasure
            return images(generate(client, [])), images(generate(client, [erasure["id"]]))
    finally:
        solo.stop()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["redis", "file"])
def test_two_replicas_and_two_workers_on_one_redis(
    tmp_path: Path, prefix: str, store: str, solo_ice: tuple[list[str], list[str]]
) -> None:
    plain_solo, erased_solo = solo_ice
    assert erased_solo != plain_solo  # the erasure changes the picture, so "identical" below means it was used
    with ExitStack() as stack:
        deployment = Deployment(tmp_path, store, prefix, stack)
        url_a, url_b = deployment.serve("replica-a"), deployment.serve("replica-b")
        workers = [deployment.start(["worker"], f"worker-{i}") for i in (1, 2)]
        wait_ready(url_a, timeout=300)
        wait_ready(url_b, timeout=300)
        a = stack.enter_context(httpx.Client(base_url=url_a, timeout=300))
        b = stack.enter_context(httpx.Client(base_url=url_b, timeout=300))

        # An erasure created through A is usable through B within a second; B loads and attaches it on first use.
        created = a.post("/v1/erasures", json={"concept": "triangle", "method": "ice"})
        made_at = time.monotonic()
        assert created.status_code == 201 and created.json()["status"] == "ready", created.text
        erasure_id = created.json()["id"]
        seen = b.get(f"/v1/erasures/{erasure_id}")
        assert seen.status_code == 200 and seen.json()["status"] == "ready", seen.text
        assert time.monotonic() - made_at < 1.0
        assert images(generate(b, [erasure_id])) == erased_solo
        # Each replica's generations are byte-identical to the solo run's, with and without the erasure.
        assert images(generate(a, [erasure_id])) == erased_solo
        assert images(generate(b, [])) == plain_solo and images(generate(a, [])) == plain_solo

        # A deletion through A is seen by B (which has the erasure attached) within a second.
        assert a.delete(f"/v1/erasures/{erasure_id}").status_code == 200
        deleted_at = time.monotonic()
        gone = generate(b, [erasure_id], steps=1)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "erasure_not_found", gone.text
        assert time.monotonic() - deleted_at < 1.0

        # A worker killed mid-job: the other resumes it from the shared checkpoint.
        job = {"concept": "square", "method": "eraseanything", "options": {**FAST, "steps": 30, "checkpoint_every": 3}}
        job_id = a.post("/v1/erasures", json=job).json()["id"]
        stack.callback(lambda: [deployment.conn.delete(k) for k in deployment.conn.scan_iter(f"rq:*{job_id}*")])
        logs = "\n".join(w.tail() for w in workers)
        wait_for(b, job_id, lambda e: e["step"] >= 7 and deployment.has_checkpoint(job_id), logs)
        token = deployment.conn.get(f"{prefix}lease:{job_id}")
        assert token is not None, "no worker holds the job's lease"
        holder = next(w for w in workers if f":{w.proc.pid}:" in token.decode())
        holder.kill()
        survivor = next(w for w in workers if w is not holder)
        erasure = wait_for(a, job_id, lambda e: e["status"] not in ("queued", "running"), survivor.tail())
        assert erasure["status"] == "ready", (erasure, survivor.tail())
        assert erasure["attempts"] == 2
        assert erasure["resumed_from_step"] is not None and erasure["resumed_from_step"] % 3 == 0
        assert erasure["resumed_from_step"] >= 6
        assert "resumes from its checkpoint" in survivor.tail()
        assert not deployment.has_checkpoint(job_id) and deployment.has_artifact(job_id)
        assert images(generate(a, [job_id])) == images(generate(b, [job_id]))


# -- the Redis store on its own ----------------------------------------------------------------------------------


@pytest.fixture
def store(prefix: str) -> Iterator[RedisErasureStore]:
    conn = redis.Redis.from_url(REDIS_URL)
    yield RedisErasureStore(conn, prefix)
    conn.close()


def artifact(seed: int = 0) -> ErasureArtifact:
    g = torch.Generator().manual_seed(seed)
    delta = LowRankDelta(torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 1.0)
    return ErasureArtifact({"blocks.0.attn": delta}, {"method": "ice", "concept": {"concept": "triangle"}})


def record(**fields: Any) -> ErasureRecord:
    return ErasureRecord(id=new_id(), tenant="t", model="flux", method="ice", spec={"concept": "x"}, **fields)


def test_a_published_artifact_is_read_back_checked_and_a_tampered_one_refused(
    store: RedisErasureStore, prefix: str
) -> None:
    added = store.add(record())
    published = store.save_artifact(added.id, artifact(), require_active=True)
    assert published.status == JobStatus.succeeded and published.artifact_bytes
    other = RedisErasureStore(redis.Redis.from_url(REDIS_URL), prefix)
    assert other.load_artifact(added.id).content_hash() == artifact().content_hash()  # another process sees it
    store.conn.set(store.keys.artifact(added.id), artifact(seed=1).to_bytes())
    with pytest.raises(ArtifactError, match="does not match"):
        other.load_artifact(added.id)
    assert store.delete(added.id) and store.find(added.id) is None
    assert store.conn.exists(store.keys.artifact(added.id)) == 0 and store.list() == []


def test_a_finished_record_refuses_progress_and_a_second_publication(store: RedisErasureStore) -> None:
    running = store.add(record(status=JobStatus.running))
    store.update(running.id, require_active=True, status=JobStatus.cancelled)
    with pytest.raises(RecordFinishedError):
        store.update(running.id, require_active=True, step=3)
    with pytest.raises(RecordFinishedError):
        store.save_artifact(running.id, artifact(), require_active=True)
    assert store.get(running.id).status == JobStatus.cancelled and store.get(running.id).step == 0
    assert store.conn.exists(store.keys.artifact(running.id)) == 0  # nothing published, nothing half-written


def test_concurrent_writers_never_undo_a_cancellation(store: RedisErasureStore) -> None:
    """Workers' progress reports race the API's cancel: once cancelled, the record stays cancelled."""
    job = store.add(record(status=JobStatus.running))
    refused: list[int] = []

    def report() -> None:
        for step in range(200):
            try:
                store.update(job.id, require_active=True, status=JobStatus.running, step=step)
            except RecordFinishedError:
                refused.append(step)
                return

    threads = [threading.Thread(target=report) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    store.update(job.id, require_active=True, status=JobStatus.cancelled)
    for thread in threads:
        thread.join()
    assert store.get(job.id).status == JobStatus.cancelled
    assert len(refused) == 3


def test_recovery_fails_damaged_and_interrupted_erasures_and_drops_orphans(store: RedisErasureStore) -> None:
    intact = store.save_artifact(store.add(record()).id, artifact())
    damaged = store.save_artifact(store.add(record()).id, artifact())
    store.conn.delete(store.keys.artifact(damaged.id))
    unfinished = store.add(record(status=JobStatus.running))
    store.checkpoints(unfinished.id).save({"w": torch.ones(3)}, {"step": 6})
    store.conn.set(store.keys.artifact(unfinished.id), b"orphan")  # an artifact no succeeded record owns
    store.conn.set(store.keys.checkpoint(new_id()), b"orphan")  # a checkpoint of no record
    assert store.checkpoints(unfinished.id).saved_step() == 6

    counts = store.recover(interrupt_unfinished=False)
    assert counts["records"] == 3 and counts["marked_failed"] == 1
    assert counts["orphans_removed"] == 1 and counts["checkpoints_removed"] == 1
    assert store.get(damaged.id).status == JobStatus.failed and store.get(damaged.id).error.code == "artifact_missing"
    assert store.get(intact.id).status == JobStatus.succeeded
    loaded = store.checkpoints(unfinished.id).load()
    assert loaded is not None and loaded[1] == {"step": 6} and torch.equal(loaded[0]["w"], torch.ones(3))

    counts = store.recover(interrupt_unfinished=True)
    assert counts["marked_failed"] == 1 and counts["checkpoints_removed"] == 1  # a failed job resumes no more
    assert store.get(unfinished.id).status == JobStatus.failed
    assert store.conn.exists(store.keys.checkpoint(unfinished.id)) == 0


def test_an_unreachable_store_is_a_typed_error_and_the_redis_store_needs_a_url(tmp_path: Path) -> None:
    conn = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))  # fail fast
    dead = RedisErasureStore(conn, "erasure-dead-")
    with pytest.raises(StoreUnavailableError):
        dead.find(new_id())
    with pytest.raises(StoreUnavailableError):
        dead.add(record())
    with pytest.raises(ValidationError, match="ERASURE_STORE=redis needs ERASURE_REDIS_URL"):
        Settings(store="redis", auth="off", data_dir=tmp_path)
    assert isinstance(open_store(Settings(auth="off", data_dir=tmp_path)), ErasureStore)
    assert isinstance(open_store(Settings(store="redis", redis_url=REDIS_URL, auth="off")), RedisErasureStore)


def test_writes_of_a_stale_job_attempt_are_refused(store: RedisErasureStore) -> None:
    """The attempt fence holds on the Redis store too: a worker that lost its job changes nothing."""
    job = store.add(record())
    store.update(job.id, require_active=True, if_attempts=0, attempts=1, status=JobStatus.running)
    with pytest.raises(StaleAttemptError):  # a second start of attempt 0 loses the compare-and-set
        store.update(job.id, require_active=True, if_attempts=0, attempts=1, status=JobStatus.running)
    store.update(job.id, require_active=True, if_attempts=1, attempts=2, status=JobStatus.running)  # taken over
    with pytest.raises(StaleAttemptError):
        store.update(job.id, require_active=True, attempt=1, step=5)
    with pytest.raises(StaleAttemptError):
        store.save_artifact(job.id, artifact(), require_active=True, attempt=1)
    with pytest.raises(StaleAttemptError):
        store.check_attempt(job.id, 1)
    assert store.get(job.id).step == 0 and store.conn.exists(store.keys.artifact(job.id)) == 0
    assert store.save_artifact(job.id, artifact(), require_active=True, attempt=2).status == JobStatus.succeeded
