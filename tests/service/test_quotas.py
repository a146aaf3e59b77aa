"""Per-tenant quotas over real HTTP: 429 `quota_exceeded` with a truthful Retry-After, nothing charged or written."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import LiveServer

OP, ALICE, BOB, CAROL = (f"{name}-key-0123456789abcdef" for name in ("op", "alice", "bob", "carol"))
KEYS = {OP: "operator", ALICE: "alice", BOB: "bob", CAROL: "carol"}
WINDOW_S = 3.0
# 32x32 pixels x 4 steps x 4 images = 0.016 megapixel-steps a request: alice may spend three in a window.
BODY = {"prompt": "a red circle", "n": 4, "steps": 4, "seed": 0}
QUOTAS = {
    "alice": {"cost_per_window": 0.05, "max_request_cost": 0.5, "max_erasures": 2},
    "carol": {"max_jobs": 1},
}


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
