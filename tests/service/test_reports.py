"""Erasure reports over real HTTP: a job like training (202, progress, ready), its grid PNG, tenancy, bad bodies."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from .conftest import LiveServer

ALPHA, BETA = "alpha-key-0123456789abcdef", "beta-key-0123456789abcdef"
KEYS = {ALPHA: "alpha", BETA: "beta"}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("report-data"), api_keys=KEYS)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def erasure_id(server: LiveServer) -> str:
    with server.client(ALPHA) as client:
        response = client.post("/v1/erasures", json={"concept": "triangle"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(
    "body",
    [
        {"seeds": 0},
        {"seeds": 9},
        {"seeds": "2"},
        {"attack_steps": 100_000},
        {"attack": "yes"},
        {"judge": "nudenet"},
    ],
)
def test_bad_bodies_are_refused_and_queue_nothing(server: LiveServer, erasure_id: str, body: dict) -> None:
    with server.client(ALPHA) as client:
        response = client.post(f"/v1/erasures/{erasure_id}/reports", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert client.get(f"/v1/erasures/{erasure_id}/reports").json()["data"] == []


def test_a_report_runs_as_a_job_and_serves_its_grid(server: LiveServer, erasure_id: str) -> None:
    base = f"/v1/erasures/{erasure_id}/reports"
    with server.client(ALPHA) as client:
        assert client.post("/v1/erasures/er_000000000000000000000000/reports").status_code == 404
        created = client.post(base, json={"seeds": 1, "attack_steps": 4})
        assert created.status_code == 202, created.text
        report_id = created.json()["id"]
        assert created.json()["status"] in ("queued", "running")
        early = client.get(f"{base}/{report_id}/grid.png")
        if early.status_code == 404:  # the usual case: the job has barely started
            assert early.json()["error"]["code"] == "report_grid_not_found"
        phases = set()
        deadline = time.monotonic() + 600
        while (record := client.get(f"{base}/{report_id}").json())["status"] in ("queued", "running"):
            phases.add(record["progress"]["phase"])
            assert time.monotonic() < deadline, record
            time.sleep(0.5)
        assert record["status"] == "ready", record
        assert {"generate"} & phases or record["progress"]["step"] == record["progress"]["total"]
        report = record["report"]
        assert report["erasure"]["id"] == erasure_id and report["judge"]["name"] == "shapes"
        assert report["efficacy"]["target"]["erased"] <= 0.2 and report["efficacy"]["target"]["base"] >= 0.5
        assert report["robustness"]["attack"]["budget"]["steps"] == 4
        grid = client.get(record["grid_url"])
        assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(grid.content))
        assert image.size == (report["grid"]["width"], report["grid"]["height"])
        assert [r["id"] for r in client.get(base).json()["data"]] == [report_id]
        assert client.get(f"{base}/rp_000000000000000000000000").json()["error"]["code"] == "report_not_found"
    with server.client(BETA) as other:
        for path in (base, f"{base}/{report_id}", f"{base}/{report_id}/grid.png"):
            response = other.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "erasure_not_found"
        assert other.post(base, json={}).status_code == 404


def test_reports_survive_a_restart(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    """A report left queued by a stopped service is picked up by the next one (the embedded runner resumes it), and
    goes with its erasure when that is deleted."""
    from service.store import ErasureStore
    from service.store_reports import ReportRecord, new_report_id, report_store_for

    first = start_server(tmp_path, api_keys=KEYS)
    with first.client(ALPHA) as client:
        erasure = client.post("/v1/erasures", json={"concept": "square"}).json()["id"]
    first.stop()
    reports = report_store_for(ErasureStore(tmp_path))
    left = ReportRecord(
        id=new_report_id(), erasure_id=erasure, tenant="alpha", model="flux", config={"seeds": 1, "attack": False}
    )
    reports.add(left)
    second = start_server(tmp_path, api_keys=KEYS)
    with second.client(ALPHA) as client:
        deadline = time.monotonic() + 600
        while (record := client.get(f"/v1/erasures/{erasure}/reports/{left.id}").json())["status"] != "ready":
            assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
            time.sleep(0.5)
        assert record["attempts"] == 1 and record["report"]["robustness"]["attack"]["skipped"]
        assert reports.grid(left.id) is not None
        # Deleting the erasure deletes its reports: nothing of them stays on disk.
        assert client.delete(f"/v1/erasures/{erasure}").status_code == 200
        assert reports.find(left.id) is None and reports.grid(left.id) is None
        assert not list((tmp_path / "reports").glob(f"{left.id}*"))
        assert client.get(f"/v1/erasures/{erasure}/reports/{left.id}").status_code == 404
    second.stop()


@pytest.mark.slow
def test_a_report_runs_on_an_erasure_worker(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    """With ERASURE_REDIS_URL the API queues the report on Redis and an `erasure worker` process runs it."""
    import os
    import secrets
    import subprocess
    import sys

    import redis

    url = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"erasure-test-report-{secrets.token_hex(4)}-"
    conn = redis.Redis.from_url(url)
    api = start_server(tmp_path, redis_url=url, queue_prefix=prefix, job_lease_s=2.0)
    env = os.environ | {
        "ERASURE_REDIS_URL": url,
        "ERASURE_QUEUE_PREFIX": prefix,
        "ERASURE_DATA_DIR": str(tmp_path),
        "ERASURE_DEVICE": "cpu",
        "ERASURE_AUTH": "off",
        "ERASURE_JOB_LEASE_S": "2",
    }
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker, report_id = None, "none"
    try:
        with api.client() as client:
            erasure = client.post("/v1/erasures", json={"concept": "circle"}).json()["id"]
            created = client.post(f"/v1/erasures/{erasure}/reports", json={"seeds": 1, "attack": False})
            assert created.status_code == 202, created.text
            report_id = created.json()["id"]
            path = f"/v1/erasures/{erasure}/reports/{report_id}"
            time.sleep(1.0)  # no worker yet: the API does not run queued jobs itself
            assert client.get(path).json()["status"] == "queued"
            root = Path(__file__).resolve().parents[2]
            cmd = [sys.executable, "-m", "service.cli", "worker"]
            worker = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while (record := client.get(path).json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, record
                time.sleep(0.5)
            assert record["status"] == "ready", (record, (tmp_path / "worker.log").read_text()[-3000:])
            assert client.get(f"{path}/grid.png").status_code == 200
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(timeout=30)
        log.close()
        for key in [
            *conn.scan_iter(f"{prefix}*"),
            *conn.scan_iter(f"rq:*{prefix}*"),
            *conn.scan_iter(f"rq:job:{report_id}-*"),
        ]:
            conn.delete(key)


def test_the_reaper_requeues_a_report_whose_worker_died(tmp_path: Path) -> None:
    """A running report with no lease and no rq job waiting (its worker was killed) goes back on the queue."""
    import os
    import secrets

    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from service.jobs.redis_queue import Keys, reap
    from service.settings import Settings
    from service.store import ErasureStore, JobStatus
    from service.store_reports import ReportRecord, new_report_id, report_store_for

    url = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"erasure-test-report-{secrets.token_hex(4)}-"
    settings = Settings(data_dir=tmp_path, auth="off", redis_url=url, queue_prefix=prefix, job_lease_s=2.0)
    conn, store = redis.Redis.from_url(url), ErasureStore(tmp_path)
    reports = report_store_for(store)
    record = ReportRecord(
        id=new_report_id(), erasure_id="er_" + "0" * 24, tenant="t", model="flux", status="running", attempts=1
    )
    reports.add(record)
    keys = Keys(prefix)
    conn.sadd(keys.active, record.id)
    try:
        assert reap(conn, store, settings)["requeued"] == 1
        requeued = reports.find(record.id)
        assert requeued is not None and requeued.status == JobStatus.queued and requeued.attempts == 1
        assert Queue(keys.queue("flux"), connection=conn, serializer=JSONSerializer).count == 1
        assert reap(conn, store, settings)["requeued"] == 0  # waiting in rq now: left alone
    finally:
        for key in [
            *conn.scan_iter(f"{prefix}*"),
            *conn.scan_iter(f"rq:*{prefix}*"),
            *conn.scan_iter(f"rq:job:{record.id}-*"),
        ]:
            conn.delete(key)
