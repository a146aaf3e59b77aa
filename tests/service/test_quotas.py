"""Per-tenant quotas over real HTTP: 429 `quota_exceeded` with a truthful Retry-After, nothing charged or written;
a queued generation whose client left is dropped, never run, and not charged."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError

from service.settings import Settings

from .conftest import LiveServer

OP, ALICE, BOB, CAROL, DAVE, ERIN = (
    f"{name}-key-0123456789abcdef" for name in ("op", "alice", "bob", "carol", "dave", "erin")
)
KEYS = {OP: "operator", ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave", ERIN: "erin"}
WINDOW_S = 5.0  # short, so that waiting out a Retry-After is quick; long enough for a loaded CI machine
# 32x32 pixels x 4 steps x 4 images = 0.016 megapixel-steps a request: alice may spend three in a window.
BODY = {"prompt": "a red circle", "n": 4, "steps": 4, "seed": 0}
QUOTAS = {
    "alice": {"cost_per_window": 0.05, "max_request_cost": 0.5, "max_erasures": 2},
    "carol": {"max_jobs": 1},
    "dave": {"max_bytes": 1},
    "erin": {"cost_per_window": 0.02},  # one BODY a window
}
REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LONG = {"prompt": "a blue square", "n": 8, "steps": 100, "seed": 0}  # seconds of pipeline time on the demo world


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """A sample of the service's /metrics (0 when it has none yet)."""
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{rendered}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir: Path = tmp_path_factory.mktemp("quota-data")
    live = start_server(data_dir, api_keys=KEYS, quota_window_s=WINDOW_S, tenant_quotas=QUOTAS)
    yield live
    live.stop()


def test_generation_budget_per_window(server: LiveServer) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob:
        for _ in range(3):
            assert alice.post("/v1/images/generations", json=BODY).status_code == 200
        refused = alice.post("/v1/images/generations", json=BODY)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= WINDOW_S
        assert bob.post("/v1/images/generations", json=BODY).status_code == 200  # another tenant is still served
        # A refused request is not charged: waiting Retry-After is enough.
        time.sleep(retry_after + 0.1)
        assert alice.post("/v1/images/generations", json=BODY).status_code == 200


def test_a_request_over_the_per_request_limit_is_refused(server: LiveServer) -> None:
    with server.client(ALICE) as alice, server.client(OP) as op:
        big = {**BODY, "n": 8, "steps": 100}  # 0.82 megapixel-steps
        response = alice.post("/v1/images/generations", json=big)
        assert response.status_code == 422 and "per request" in response.json()["error"]["message"]
        assert op.post("/v1/images/generations", json={**big, "steps": 2}).status_code == 200  # the operator is exempt


def test_stored_erasures_are_bounded(server: LiveServer) -> None:
    with server.client(ALICE) as alice:
        for concept in ("circle", "square"):
            assert alice.post("/v1/erasures", json={"concept": concept}).status_code == 201
        refused = alice.post("/v1/erasures", json={"concept": "cross"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(alice.get("/v1/erasures").json()["data"]) == 2  # nothing written
        first = alice.get("/v1/erasures").json()["data"][0]["id"]
        assert alice.delete(f"/v1/erasures/{first}").status_code == 200
        assert alice.post("/v1/erasures", json={"concept": "cross"}).status_code == 201


def test_concurrent_jobs_are_bounded(server: LiveServer) -> None:
    job = {"concept": "square", "method": "eraseanything", "options": {"preset": "cpu", "steps": 400}}
    with server.client(CAROL) as carol:
        first = carol.post("/v1/erasures", json=job)
        assert first.status_code == 202, first.text
        refused = carol.post("/v1/erasures", json=job)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        assert carol.delete(f"/v1/erasures/{first.json()['id']}").json()["status"] == "cancelled"
        assert carol.post("/v1/erasures", json={**job, "options": {"preset": "cpu", "steps": 2}}).status_code == 202


def test_a_request_no_window_can_admit_is_422_not_429(server: LiveServer) -> None:
    # 0.066 megapixel-steps: under alice's per-request limit (0.5) but over her whole window (0.05). A 429 would have
    # her retry forever.
    with server.client(ALICE) as alice:
        response = alice.post("/v1/images/generations", json={**BODY, "steps": 16})
        assert response.status_code == 422, response.text
        assert "per window" in response.json()["error"]["message"] and "Retry-After" not in response.headers


def test_stored_bytes_are_bounded(server: LiveServer) -> None:
    with server.client(DAVE) as dave:
        assert dave.post("/v1/erasures", json={"concept": "circle"}).status_code == 201  # 0 bytes stored before it
        refused = dave.post("/v1/erasures", json={"concept": "square"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        assert "bytes" in refused.json()["error"]["message"]
        assert [e["concept"]["concept"] for e in dave.get("/v1/erasures").json()["data"]] == ["circle"]
        assert metric(dave, "erasure_quota_exceeded_total", limit="max_bytes") == 1


def test_a_disconnected_clients_queued_generation_is_dropped_never_run_and_not_charged(server: LiveServer) -> None:
    with server.client(OP) as op, server.client(ERIN) as erin:
        generated = metric(op, "erasure_generations_total", model="flux")
        dropped = metric(op, "erasure_generations_dropped_total", model="flux")
        long: dict = {}
        busy = threading.Thread(target=lambda: long.update(r=op.post("/v1/images/generations", json=LONG)))
        busy.start()  # the operator's long request occupies the pipeline for seconds
        time.sleep(0.5)
        # erin's request waits behind it; her client gives up after 0.5 s and closes the connection.
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ERIN}"}, timeout=0.5) as gone:
            with pytest.raises(httpx.ReadTimeout):
                gone.post("/v1/images/generations", json=BODY)
        wait_for(lambda: metric(op, "erasure_generations_dropped_total", model="flux") == dropped + 1)
        assert busy.is_alive(), "the long request finished too early to prove anything"
        # Her budget is one such request a window: the dropped one was given back, so this one is admitted at once.
        assert erin.post("/v1/images/generations", json=BODY).status_code == 200
        busy.join(timeout=120)
        assert long["r"].status_code == 200
        assert metric(op, "erasure_generations_total", model="flux") == generated + 2  # the dropped one never ran


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    prefix = f"test-quotas-{uuid.uuid4().hex[:8]}-"
    yield prefix
    conn = redis.Redis.from_url(REDIS_URL)
    for key in conn.scan_iter(f"{prefix}*"):
        conn.delete(key)


def test_replicas_share_one_budget_through_redis(
    start_server: Callable[..., LiveServer], tmp_path: Path, redis_prefix: str
) -> None:
    settings = {"api_keys": KEYS, "quota_window_s": WINDOW_S, "tenant_quotas": QUOTAS}
    replicas = [
        start_server(tmp_path / name, redis_url=REDIS_URL, queue_prefix=redis_prefix, **settings) for name in "ab"
    ]
    try:
        with replicas[0].client(ALICE) as on_a, replicas[1].client(ALICE) as on_b, replicas[1].client(BOB) as bob:
            for client in (on_a, on_b, on_a):
                assert client.post("/v1/images/generations", json=BODY).status_code == 200
            refused = on_b.post("/v1/images/generations", json=BODY)  # the fourth, on the other replica
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
            retry_after = int(refused.headers["Retry-After"])
            assert 1 <= retry_after <= WINDOW_S
            assert bob.post("/v1/images/generations", json=BODY).status_code == 200
            time.sleep(retry_after + 0.1)
            assert on_b.post("/v1/images/generations", json=BODY).status_code == 200
    finally:
        for replica in replicas:
            replica.stop()


def test_without_redis_the_budget_is_kept_in_process(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    # Generation keeps working while Redis is unreachable, and the tenant is still limited (per replica).
    server = start_server(
        tmp_path, api_keys=KEYS, tenant_quotas=QUOTAS, redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5
    )
    try:
        with server.client(ERIN) as erin:
            assert erin.post("/v1/images/generations", json=BODY).status_code == 200
            refused = erin.post("/v1/images/generations", json=BODY)
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    "limits", ['{"max_jobs": Infinity}', '{"cost_per_window": NaN}', '{"max_bytes": -1}', '{"jobs": 2}']
)
def test_a_bad_override_stops_startup(limits: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An infinite count would fail every request of that tenant with a 500; better to refuse to start.
    monkeypatch.setenv("ERASURE_TENANT_QUOTAS", f'{{"alice": {limits}}}')
    with pytest.raises(ValidationError, match="tenant_quotas"):
        Settings(auth="off")


def test_a_full_queue_says_when_to_retry_and_charges_nothing(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = start_server(tmp_path, api_keys=KEYS, tenant_quotas=QUOTAS, max_queue=1, quota_window_s=60)
    try:
        with server.client(OP) as op, server.client(ERIN) as erin:
            answers: list[httpx.Response] = []
            busy = [
                threading.Thread(target=lambda body=body: answers.append(op.post("/v1/images/generations", json=body)))
                for body in (LONG, BODY)
            ]
            busy[0].start()  # runs for seconds
            time.sleep(0.5)
            busy[1].start()  # waits: the queue (1) is full
            wait_for(lambda: metric(op, "erasure_queue_depth", model="flux") == 1)
            refused = erin.post("/v1/images/generations", json=BODY)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["Retry-After"]) >= 1
            for thread in busy:
                thread.join(timeout=120)
            assert [a.status_code for a in answers] == [200, 200]
            # erin's budget is one request a minute: the refused one did not spend it.
            assert erin.post("/v1/images/generations", json=BODY).status_code == 200
            again = erin.post("/v1/images/generations", json=BODY)
            assert again.status_code == 429 and again.json()["error"]["code"] == "quota_exceeded"
            assert 50 <= int(again.headers["Retry-After"]) <= 60
    finally:
        server.stop()
