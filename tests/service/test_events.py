"""`GET /v1/erasures/{id}/events` over real HTTP: a trained job's progress arrives in order with ids, heartbeats
keep a quiet stream alive, `Last-Event-ID` resumes, tenants see only their own erasures, and a client that goes
away leaves no stream behind."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from service.api.events import redact_keys_in_access_log
from service.store import JobStatus
from service.store_redis import RedisErasureStore

from .conftest import LiveServer

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
KEYS = {ALICE: "alice", BOB: "bob"}
# A short EraseAnything++ job (as in test_api.py): a few seconds on a CPU, so several of its (at most one a
# second) progress writes arrive.
REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FAST_JOB = {"steps": 30, "concept_images": 1, "sample_steps": 2, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("events-data"), api_keys=KEYS)
    # Quick polls and heartbeats, so a short test sees both (defaults: 0.5 s and 15 s).
    server.app.state.events.poll_s = 0.05
    server.app.state.events.heartbeat_s = 0.3
    yield server
    server.stop()


def read_events(lines: Iterator[str]) -> tuple[list[dict[str, Any]], int]:
    """The events of a stream until it ends, and how many heartbeat comments came with them."""
    events: list[dict[str, Any]] = []
    heartbeats = 0
    block: dict[str, Any] = {}
    for line in lines:
        if line.startswith(": heartbeat"):
            heartbeats += 1
        elif line.startswith(("id: ", "event: ")):
            name, _, value = line.partition(": ")
            block[name] = value
        elif line.startswith("data: "):
            block["data"] = json.loads(line[len("data: ") :])
        elif not line and block:
            events.append(block)
            block = {}
            if events[-1]["event"] == "end":
                break
    return events, heartbeats


def stream(client: httpx.Client, erasure_id: str, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    with client.stream("GET", f"/v1/erasures/{erasure_id}/events", **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response.iter_lines())


def settles(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `condition` holds within `timeout` (the server's loop runs in another thread)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def sequence(event: dict[str, Any]) -> int:
    return int(event["id"].split("-")[0])


def ice_erasure(client: httpx.Client, concept: str = "circle") -> str:
    response = client.post("/v1/erasures", json={"concept": concept, "method": "ice"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_job_progress_arrives_in_order_with_ids(server: LiveServer) -> None:
    with server.client(ALICE) as client:
        body = {"concept": "triangle", "method": "eraseanything", "options": FAST_JOB}
        created = client.post("/v1/erasures", json=body)
        assert created.status_code == 202, created.text
        events, heartbeats = stream(client, created.json()["id"])
    ids = [sequence(e) for e in events]
    assert ids == list(range(1, len(events) + 1)), ids
    progress = [e["data"] for e in events if e["event"] == "erasure"]
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps) and steps[-1] == FAST_JOB["steps"], steps
    running = [p for p in progress if p["status"] == "running" and p["step"] > 0]
    assert len(running) >= 2, progress  # several training steps were seen as they happened
    assert all(p["losses"] and p["total_steps"] == FAST_JOB["steps"] for p in running)
    assert any(p["eta_s"] is not None for p in running)
    assert progress[-1]["status"] == "ready"
    assert events[-1] == {"id": events[-1]["id"], "event": "end", "data": {"reason": "finished", "status": "ready"}}
    assert heartbeats >= 1  # the job spends seconds making its concept images before step 1


def test_last_event_id_resumes(server: LiveServer) -> None:
    with server.client(ALICE) as client:
        erasure_id = ice_erasure(client)
        first, _ = stream(client, erasure_id)
        assert [e["event"] for e in first] == ["erasure", "end"]
        assert first[0]["data"]["status"] == "ready"
        # Reconnecting after the state event: nothing changed since, so only the end follows, numbered on.
        resumed, _ = stream(client, erasure_id, headers={"Last-Event-ID": first[0]["id"]})
        assert [e["event"] for e in resumed] == ["end"]
        assert sequence(resumed[0]) == sequence(first[0]) + 1
        # An id this stream did not send (or a stale one) gets the current state again.
        fresh, _ = stream(client, erasure_id, headers={"Last-Event-ID": "garbage"})
        assert [e["event"] for e in fresh] == ["erasure", "end"]


def test_tenancy_and_unknown_ids(server: LiveServer) -> None:
    with server.client(ALICE) as alice:
        erasure_id = ice_erasure(alice, "square")
    with server.client(BOB) as bob:
        other = bob.get(f"/v1/erasures/{erasure_id}/events")
        assert other.status_code == 404 and other.json()["error"]["code"] == "erasure_not_found"
        unknown = bob.get("/v1/erasures/er_000000000000000000000000/events")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "erasure_not_found"
        assert bob.get("/v1/erasures/not-an-id/events").status_code == 404
    with server.client() as anonymous:
        assert anonymous.get(f"/v1/erasures/{erasure_id}/events").status_code == 401
        wrong = anonymous.get(f"/v1/erasures/{erasure_id}/events", params={"api_key": "x" * 20})
        assert wrong.status_code == 401
        # EventSource cannot send headers: on this route the key may come as a query parameter.
        events, _ = stream(anonymous, erasure_id, params={"api_key": ALICE})
        assert [e["event"] for e in events] == ["erasure", "end"]
        other_tenant = anonymous.get(f"/v1/erasures/{erasure_id}/events", params={"api_key": BOB})
        assert other_tenant.status_code == 404
        # Only this route reads the query parameter.
        assert anonymous.get(f"/v1/erasures/{erasure_id}", params={"api_key": ALICE}).status_code == 401


def test_a_client_that_leaves_leaves_no_stream(server: LiveServer) -> None:
    streams = server.app.state.events
    assert settles(lambda: streams.open_streams == 0, timeout=30)  # an earlier test's client may still be leaving
    # The test holds the pipeline's erase lock, so the job waits to train: it can neither finish nor fail while the
    # stream is open.
    erase_lock = server.runtime.pool.get("flux").erase_lock
    with server.client(ALICE) as client, erase_lock:
        body = {"concept": "star", "method": "eraseanything", "options": FAST_JOB}
        erasure_id = client.post("/v1/erasures", json=body).json()["id"]
        with client.stream("GET", f"/v1/erasures/{erasure_id}/events") as response:
            # Kept in a name: an abandoned line iterator is closed at once, and httpx then drops the connection
            # (the client would have left already, and the count below would race the server noticing it).
            lines = response.iter_lines()
            assert any(line.startswith("event: erasure") for line in lines)
            assert settles(lambda: streams.open_streams == 1, timeout=30)
            time.sleep(1.0)  # several polls: a connected client's stream stays open
            assert streams.open_streams == 1
        assert settles(lambda: streams.open_streams == 0, timeout=30)  # the server noticed and ended it
        # Cancelling ends the stream of a job that has not finished.
        assert client.delete(f"/v1/erasures/{erasure_id}").json()["status"] == "cancelled"
        events, _ = stream(client, erasure_id)
        assert events[-1]["data"] == {"reason": "finished", "status": "cancelled"}


def test_keys_in_the_query_are_kept_out_of_the_access_log() -> None:
    redact_keys_in_access_log()
    path = "/v1/erasures/er_1/events?api_key=alice-secret-key&x=1"
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', None, None)
    record.args = ("127.0.0.1:5", "GET", path, "1.1", 200)
    for check in logging.getLogger("uvicorn.access").filters:
        check.filter(record)  # type: ignore[union-attr]
    assert record.getMessage() == '127.0.0.1:5 - "GET /v1/erasures/er_1/events?api_key=***&x=1 HTTP/1.1" 200'


def test_progress_written_by_a_worker_through_the_redis_store_arrives(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With the store and the queue on Redis, the job runs in an `erasure worker` elsewhere: what that worker writes
    into the shared store is what the stream sends (no worker runs here; the test writes as one would)."""
    prefix = f"erasure-test-{secrets.token_hex(4)}-"
    conn = redis.Redis.from_url(REDIS_URL)
    server = start_server(
        tmp_path_factory.mktemp("events-redis"), store="redis", redis_url=REDIS_URL, queue_prefix=prefix
    )
    server.app.state.events.poll_s, server.app.state.events.heartbeat_s = 0.05, 0.3
    try:
        with server.client() as client:
            erasure_id = client.post("/v1/erasures", json={"concept": "star", "method": "eraseanything"}).json()["id"]
            with client.stream("GET", f"/v1/erasures/{erasure_id}/events") as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: ")).count('"status": "queued"') == 1
                assert next(line for line in lines if line.startswith(": heartbeat"))  # a queued job is quiet
                worker_store = RedisErasureStore(redis.Redis.from_url(REDIS_URL), prefix)
                worker_store.update(erasure_id, status=JobStatus.running, step=3, total_steps=10, losses={"esd": 0.5})
                data = json.loads(next(line for line in lines if line.startswith("data: "))[len("data: ") :])
                assert (data["status"], data["step"], data["losses"]) == ("running", 3, {"esd": 0.5})
                assert client.delete(f"/v1/erasures/{erasure_id}").json()["status"] == "cancelled"
                events, _ = read_events(lines)
        assert events[-1]["data"] == {"reason": "finished", "status": "cancelled"}
    finally:
        server.stop()
        for key in [*conn.scan_iter(f"{prefix}*"), *conn.scan_iter(f"rq:*{prefix}*")]:
            conn.delete(key)
