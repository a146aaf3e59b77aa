"""Jobs hardening, against real parts (the demo pipeline, the file store, the local Redis, the service over HTTP):

- leases are fenced by attempt: a worker that paused while its job was taken over writes nothing (no progress, no
  checkpoint, no outcome, no artifact), and a worker cut off from Redis stops within about one lease TTL;
- the store is reconciled with the queue: records Redis lost (FLUSH of our prefix) or an API crash left unfinished
  move on, at startup and periodically; embedded mode honours `job_max_attempts`;
- in embedded mode generation keeps flowing while a job trains, with exactly its own erasure set, and the job's
  artifact is bit-identical to the same job run alone.

Each Redis test uses its own key prefix on 127.0.0.1:6379 (removed afterwards).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from rq import Queue
from rq.serializers import JSONSerializer

from erasure_core.artifacts import load_artifact
from erasure_core.concepts import ConceptSpec
from erasure_core.methods import get_method
from service.jobs.execution import JobExecutor, Outcome
from service.jobs.redis_queue import Keys, connect
from service.jobs.worker import WorkerContext
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.settings import Settings
from service.store import ErasureRecord, ErasureStore, JobStatus, StaleAttemptError, new_id

from .conftest import LiveServer

REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Tiny EraseAnything++ settings: a step takes a fraction of a second on the demo world.
FAST = {"concept_images": 1, "sample_steps": 2, "batch_size": 1}


def trained_record(concept: str, steps: int, checkpoint_every: int = 1, **fields: Any) -> ErasureRecord:
    options = {**FAST, "steps": steps, "checkpoint_every": checkpoint_every}
    spec = {"concept": concept}
    record = ErasureRecord(
        id=new_id(), tenant="default", model="flux", method="eraseanything", spec=spec, options=options
    )
    return record.model_copy(update=fields)


def full_record(store: ErasureStore, record: ErasureRecord, pool: PipelinePool) -> ErasureRecord:
    """Stores `record` with its options and spec as the API would (validated by the method's config)."""
    method = get_method(record.method)
    options = method.parse_config(record.options).model_dump(mode="json")
    spec = ConceptSpec.model_validate(record.spec).model_dump(mode="json")
    return store.add(record.model_copy(update={"options": options, "spec": spec}))


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of our own on the real Redis; everything under it (and rq's keys of its queues) removed after."""
    value = f"erasure-hard-{secrets.token_hex(4)}-"
    yield value
    flush_prefix(value)


def flush_prefix(prefix: str) -> None:
    """What FLUSHALL does to this deployment: every key of ours is gone (rq's queue, registries and job hashes of
    our queues too)."""
    conn = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}*", f"rq:*{prefix}*"):
        for key in conn.scan_iter(pattern):
            conn.delete(key)
    conn.close()


def settings_for(tmp_path: Path, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": REDIS_URL, "queue_prefix": prefix, "auth": "off", "device": "cpu"}
    return Settings(data_dir=tmp_path, **{**values, **overrides})


def wait_until(condition: Callable[[], bool], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {why}"
        time.sleep(0.05)


# -- fencing -----------------------------------------------------------------------------------------------------


def test_a_stale_attempt_cannot_publish_or_finish(tmp_path: Path, demo_pool: PipelinePool) -> None:
    """The store refuses every write of an attempt that no longer runs the job: the artifact is not published (no
    file), the outcome is not written, and the current attempt's record is left as it is."""
    store = ErasureStore(tmp_path)
    store.ensure_dirs()
    record = store.add(trained_record("cross", 3, status=JobStatus.running, attempts=1))
    artifact = demo_pool.get("flux").engine.erase(ConceptSpec(concept="cross"))
    taken_over = store.update(record.id, if_attempts=1, attempts=2, step=0)  # another worker started it
    with pytest.raises(StaleAttemptError):
        store.save_artifact(record.id, artifact, require_active=True, attempt=1)
    with pytest.raises(StaleAttemptError):
        store.update(record.id, require_active=True, attempt=1, status=JobStatus.failed)
    with pytest.raises(StaleAttemptError):  # two processes starting from the same read: the second loses
        store.update(record.id, if_attempts=1, attempts=2)
    assert store.get(record.id) == taken_over
    assert not list((tmp_path / "artifacts").iterdir())
    published = store.save_artifact(record.id, artifact, require_active=True, attempt=2)
    assert published.status == JobStatus.succeeded


def test_a_paused_worker_whose_job_was_taken_over_writes_nothing(
    tmp_path: Path, demo_pool: PipelinePool, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker runs a job under its lease; while it is 'paused' (it has not noticed anything: its lease TTL is
    long), the lease lapses and another worker takes the job over (its token in the lease, attempt 2). The old
    worker's next write is refused and it stops: the record, the checkpoint and the lease stay the new attempt's."""
    settings = settings_for(tmp_path, prefix, job_lease_s=60.0)
    store = ErasureStore(tmp_path)
    store.ensure_dirs()
    record = full_record(store, trained_record("square", 400), demo_pool)
    conn = connect(settings)
    context = WorkerContext(settings, conn, JobExecutor(demo_pool, store, Metrics(), exclusive_pipeline=False))
    result: dict[str, str] = {}
    worker = threading.Thread(target=lambda: result.setdefault("outcome", context.run(record.id)))
    with caplog.at_level(logging.WARNING):
        worker.start()
        wait_until(lambda: store.get(record.id).step >= 2, 240, "the job to train two steps")
        lease = Keys(prefix).lease(record.id)
        conn.set(lease, "another-worker:1:ab", px=60_000)  # the lease lapsed and another worker took it
        taken_over = store.update(record.id, if_attempts=1, attempts=2, status=JobStatus.running)
        checkpoint = store.checkpoint_path(record.id).read_bytes()
        worker.join(timeout=120)
    assert not worker.is_alive()
    assert result["outcome"] == Outcome.abandoned.value
    assert store.get(record.id) == taken_over  # no progress, outcome or failure of attempt 1 landed
    assert store.checkpoint_path(record.id).read_bytes() == checkpoint
    assert not list((tmp_path / "artifacts").iterdir())
    assert conn.get(lease) == b"another-worker:1:ab"  # the old worker did not release (or renew) the new owner's
    assert any("stale write refused" in r.getMessage() for r in caplog.records)
    conn.close()


class CuttableProxy:
    """A TCP proxy to Redis that the test can cut, as a network partition would (refusing new connections too)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.05)  # checks `cut_off` between waits (close() does not wake a blocked accept)
        while not self.cut_off:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.cut_off:
                client.close()
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.cut_off = True
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_a_worker_cut_off_from_redis_stops_within_a_lease(tmp_path: Path, demo_pool: PipelinePool, prefix: str) -> None:
    """A worker whose lease renewals fail (Redis unreachable from it) stops its job within about one lease TTL,
    leaving the record `running` for the reaper (another worker resumes it), instead of training on forever."""
    lease_s = 2.0
    proxy = CuttableProxy(("127.0.0.1", 6379))
    db = REDIS_URL.rsplit("/", 1)[-1]
    settings = settings_for(
        tmp_path, prefix, redis_url=f"redis://127.0.0.1:{proxy.port}/{db}", job_lease_s=lease_s, redis_timeout_s=0.5
    )
    store = ErasureStore(tmp_path)
    store.ensure_dirs()
    record = full_record(store, trained_record("diamond", 5000), demo_pool)
    context = WorkerContext(settings, connect(settings), JobExecutor(demo_pool, store, Metrics(), False))
    result: dict[str, Any] = {}

    def run() -> None:
        result["outcome"] = context.run(record.id)
        result["ended"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    wait_until(lambda: store.get(record.id).step >= 2, 240, "the job to train two steps")
    proxy.cut()
    cut_at = time.monotonic()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the cut-off worker trained on"
    assert result["outcome"] == Outcome.abandoned.value
    stopped_after = result["ended"] - cut_at
    assert stopped_after < lease_s + 3.0, stopped_after  # a TTL, plus the step in progress and a slow renewal
    final = store.get(record.id)
    assert final.status == JobStatus.running and final.step < 5000 and final.error is None


# -- reconcile ---------------------------------------------------------------------------------------------------


def test_startup_and_the_reaper_reconcile_records_redis_lost(
    start_server: Callable[..., LiveServer], tmp_path: Path, demo_pool: PipelinePool, prefix: str
) -> None:
    """Records left unfinished while Redis lost our keys (and an inline ICE job whose API crashed) are re-queued at
    startup, or failed once out of attempts; a record written moments ago is left alone; after another loss the
    API's reaper re-queues again. A worker then finishes every re-queued job."""
    store = ErasureStore(tmp_path)
    store.ensure_dirs()
    old = time.time() - 3600
    running = full_record(
        store, trained_record("cross", 2, status=JobStatus.running, attempts=1, created_at=old), demo_pool
    )
    queued = full_record(store, trained_record("square", 2, created_at=old), demo_pool)
    spent = full_record(
        store, trained_record("circle", 2, status=JobStatus.running, attempts=3, created_at=old), demo_pool
    )
    inline = store.add(
        ErasureRecord(
            id=new_id(),
            tenant="default",
            model="flux",
            method="ice",
            spec={"concept": "triangle"},
            status=JobStatus.running,
            attempts=1,
            created_at=old,
            started_at=old,
        )
    )
    fresh = full_record(store, trained_record("diamond", 2), demo_pool)
    conn = redis.Redis.from_url(REDIS_URL)
    conn.sadd(Keys(prefix).active, "er_" + "0" * 24)  # whatever was there: all of it is lost below
    flush_prefix(prefix)

    api = start_server(tmp_path, redis_url=REDIS_URL, queue_prefix=prefix, job_lease_s=2.0)
    keys = Keys(prefix)
    queue = Queue(keys.queue("flux"), connection=conn, serializer=JSONSerializer)
    requeued = {running.id, queued.id, inline.id}
    with api.client() as client:
        states = {i: client.get(f"/v1/erasures/{i}").json() for i in (*requeued, spent.id, fresh.id)}
    assert all(states[i]["status"] == "queued" for i in requeued), states
    assert states[spent.id]["status"] == "failed" and states[spent.id]["error"]["code"] == "job_lost"
    assert states[fresh.id]["status"] == "queued"  # too young to judge: it may be on its way to the queue
    waiting = {job.args[0] for job in queue.get_jobs()}
    assert requeued <= waiting and fresh.id not in waiting
    assert requeued <= {m.decode() for m in conn.smembers(keys.active)}

    flush_prefix(prefix)  # Redis loses its data again while the API runs: the reaper (every 2 s) puts them back
    wait_until(lambda: requeued <= {job.args[0] for job in queue.get_jobs()}, 30, "the reaper to re-queue")

    from service.jobs.worker import run_worker

    run_worker(settings_for(tmp_path, prefix, job_lease_s=2.0), burst=True)
    with api.client() as client:
        finished = {i: client.get(f"/v1/erasures/{i}").json() for i in requeued}
    assert all(e["status"] == "ready" for e in finished.values()), finished
    conn.close()


def test_embedded_mode_honours_max_attempts(
    start_server: Callable[..., LiveServer], tmp_path: Path, demo_pool: PipelinePool
) -> None:
    """Without Redis, a job the service was stopped in `job_max_attempts` times fails as `worker_lost` at the next
    start instead of being resumed again (forever, if the job is what kills the service); one with attempts left
    resumes and finishes."""
    store = ErasureStore(tmp_path)
    store.ensure_dirs()
    spent = full_record(store, trained_record("circle", 2, status=JobStatus.running, attempts=2), demo_pool)
    resumable = full_record(store, trained_record("cross", 2, status=JobStatus.running, attempts=1), demo_pool)
    api = start_server(tmp_path, job_max_attempts=2)
    with api.client() as client:
        failed = client.get(f"/v1/erasures/{spent.id}").json()
        assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost", failed
        deadline = time.monotonic() + 120
        while (done := client.get(f"/v1/erasures/{resumable.id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
    assert done["status"] == "ready" and done["attempts"] == 2, done


# -- embedded: generation flows while a job trains ---------------------------------------------------------------


def _images(client: httpx.Client, erasures: list[str]) -> list[str]:
    body = {"prompt": "a red circle", "seed": 7, "steps": 4, "erasures": erasures}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    return [item["b64_json"] for item in response.json()["data"]]


def test_generation_flows_while_an_embedded_job_trains(
    start_server: Callable[..., LiveServer], tmp_path: Path, demo_pool: PipelinePool
) -> None:
    """Generations answer while the job is mid-training (before, the job held the pipeline to its end), each with
    exactly its own erasure set (the same images as with no job running), and the job's artifact is bit-identical
    to the same job run alone."""
    options = {**FAST, "steps": 30, "checkpoint_every": 10}
    api = start_server(tmp_path / "api")
    with api.client() as client:
        ice = client.post("/v1/erasures", json={"concept": "circle", "method": "ice"}).json()["id"]
        reference = {(): _images(client, []), (ice,): _images(client, [ice])}
        job = client.post("/v1/erasures", json={"concept": "triangle", "method": "eraseanything", "options": options})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        wait_until(lambda: client.get(f"/v1/erasures/{job_id}").json()["step"] >= 1, 240, "the job's first step")
        mid_training = 0
        for erasures in ([], [ice], [], [ice]):
            assert _images(client, erasures) == reference[tuple(erasures)], "a generation saw the wrong set"
            state = client.get(f"/v1/erasures/{job_id}").json()
            mid_training += state["status"] == "running" and state["step"] < 30
        assert mid_training >= 3, "generations waited for the job to finish"
        wait_until(lambda: client.get(f"/v1/erasures/{job_id}").json()["status"] == "ready", 240, "the job")

    # The same job (the API's own record: spec, options, seed) again, alone on the pipeline.
    solo_store = ErasureStore(tmp_path / "solo")
    solo_store.ensure_dirs()
    api_record = ErasureStore(tmp_path / "api").get(job_id)
    fields = ("tenant", "model", "method", "spec", "options")
    solo = solo_store.add(ErasureRecord(id=new_id(), **{f: getattr(api_record, f) for f in fields}))
    assert JobExecutor(demo_pool, solo_store, Metrics(), exclusive_pipeline=True).execute(solo.id) == Outcome.succeeded
    trained = load_artifact(tmp_path / "api" / "artifacts" / f"{job_id}.erasure")
    alone = load_artifact(tmp_path / "solo" / "artifacts" / f"{solo.id}.erasure")
    assert trained.deltas.keys() == alone.deltas.keys()
    for name, delta in trained.deltas.items():
        assert torch.equal(delta.A, alone.deltas[name].A) and torch.equal(delta.B, alone.deltas[name].B), name
