"""API keys and tenants, operator-wide and mandatory erasures, and isolation under concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import LiveServer

OP, ALPHA, BETA = "op-key-0123456789abcdef", "alpha-key-0123456789abcdef", "beta-key-0123456789abcdef"
KEYS = {OP: "operator", ALPHA: "alpha", BETA: "beta"}
CONCURRENT = 72


@pytest.fixture(scope="module")
def world(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Erasures made on a first server; then a restart with a policy making the operator's erasure mandatory."""
    data_dir: Path = tmp_path_factory.mktemp("tenant-data")
    first = start_server(data_dir, api_keys=KEYS)
    ids = {}
    for name, key, concept in (
        ("M", OP, "square"),
        ("A", ALPHA, "circle"),
        ("B", ALPHA, "triangle"),
        ("C", BETA, "cross"),
    ):
        with first.client(key) as client:
            response = client.post("/v1/erasures", json={"concept": concept})
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
    first.stop()
    server = start_server(data_dir, api_keys=KEYS, mandatory_erasures={"beta": [ids["M"]]})
    yield {"server": server, **ids}
    server.stop()


def test_keys_are_required_except_for_health(world: dict) -> None:
    server: LiveServer = world["server"]
    for key in (None, "wrong-key"):
        with server.client(key) as client:
            for method, path in (("GET", "/v1/erasures"), ("POST", "/v1/images/generations")):
                response = client.request(method, path, json={"prompt": "x"})
                assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
            for path in ("/healthz", "/readyz", "/metrics"):
                assert client.get(path).status_code == 200


def test_tenants_see_their_own_and_operator_erasures(world: dict) -> None:
    server: LiveServer = world["server"]
    with server.client(ALPHA) as client:
        listed = {e["id"]: e["scope"] for e in client.get("/v1/erasures").json()["data"]}
        assert listed == {world["M"]: "operator", world["A"]: "tenant", world["B"]: "tenant"}
        foreign = world["C"]
        for method, path in (
            ("GET", f"/v1/erasures/{foreign}"),
            ("DELETE", f"/v1/erasures/{foreign}"),
            ("GET", f"/v1/erasures/{foreign}/lora"),
        ):
            response = client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "erasure_not_found"
        response = client.post("/v1/images/generations", json={"prompt": "a red cross", "erasures": [foreign]})
        assert response.status_code == 404 and response.json()["error"]["code"] == "erasure_not_found"
        response = client.delete(f"/v1/erasures/{world['M']}")
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    with server.client(OP) as client:
        assert len(client.get("/v1/erasures").json()["data"]) == 4


def test_mandatory_erasure_is_applied_and_reported(world: dict) -> None:
    server: LiveServer = world["server"]
    body = {"prompt": "a green square", "seed": 11, "steps": 4}
    with server.client(BETA) as beta, server.client(ALPHA) as alpha:
        forced = beta.post("/v1/images/generations", json=body).json()
        assert forced["erasures"] == [world["M"]]
        with_c = beta.post("/v1/images/generations", json={**body, "erasures": [world["C"]]}).json()
        assert with_c["erasures"] == sorted([world["C"], world["M"]])
        explicit = alpha.post("/v1/images/generations", json={**body, "erasures": [world["M"]]}).json()
        plain = alpha.post("/v1/images/generations", json=body).json()
    assert forced["data"] == explicit["data"] != plain["data"]


def test_a_mandatory_erasure_cannot_be_deleted(world: dict) -> None:
    """Deleting an erasure the policy names would make every generation of its tenants fail: 409, nothing changes."""
    server: LiveServer = world["server"]
    with server.client(OP) as client:
        response = client.delete(f"/v1/erasures/{world['M']}")
        assert response.status_code == 409 and response.json()["error"]["code"] == "erasure_in_policy"
        assert client.get(f"/v1/erasures/{world['M']}").json()["status"] == "ready"
    with server.client(BETA) as beta:
        answer = beta.post("/v1/images/generations", json={"prompt": "a red square", "steps": 2})
        assert answer.status_code == 200 and answer.json()["erasures"] == [world["M"]]


def test_open_mode_policy_erasure_cannot_be_deleted(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    """With auth off every caller is the default tenant; it still cannot delete what the policy names for it."""
    first = start_server(tmp_path)
    with first.client() as client:
        erasure_id = client.post("/v1/erasures", json={"concept": "circle"}).json()["id"]
    first.stop()
    server = start_server(tmp_path, mandatory_erasures={"default": [erasure_id]})
    try:
        with server.client() as client:
            response = client.delete(f"/v1/erasures/{erasure_id}")
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "erasure_in_policy" and "policy" in error["message"]
            assert client.get(f"/v1/erasures/{erasure_id}").json()["status"] == "ready"
            answer = client.post("/v1/images/generations", json={"prompt": "a red circle", "steps": 2})
            assert answer.status_code == 200 and answer.json()["erasures"] == [erasure_id]
    finally:
        server.stop()
    assert (tmp_path / "records" / f"{erasure_id}.json").is_file()


def test_hashed_and_file_keys_authenticate(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    """Keys from ERASURE_API_KEYS_FILE (Docker secrets) and keys configured as `sha256:<hex>` work over HTTP."""
    file_key, hashed_file_key, hashed_env_key = (f"{name}-0123456789abcdef" for name in ("file", "hfile", "henv"))
    keys_file = tmp_path / "api_keys"
    keys_file.write_text(
        "# key:tenant, one a line\n"
        f"{file_key}:alpha\n"
        f"sha256:{hashlib.sha256(hashed_file_key.encode()).hexdigest()}:beta\n"
    )
    hashed_env = f"sha256:{hashlib.sha256(hashed_env_key.encode()).hexdigest()}"
    server = start_server(tmp_path / "data", api_keys={hashed_env: "gamma"}, api_keys_file=keys_file)
    try:
        for key, tenant in ((file_key, "alpha"), (hashed_file_key, "beta"), (hashed_env_key, "gamma")):
            with server.client(key) as client:
                created = client.post("/v1/erasures", json={"concept": "cross"})
                assert created.status_code == 201, (tenant, created.text)
                assert [e["id"] for e in client.get("/v1/erasures").json()["data"]] == [created.json()["id"]]
        for wrong in (hashed_env, hashed_env.removeprefix("sha256:"), file_key + "x", None):
            with server.client(wrong) as client:
                assert client.get("/v1/erasures").status_code == 401, wrong
    finally:
        server.stop()


def _requests(world: dict, count: int) -> list[tuple[str, dict, list[str]]]:
    """(key, body, expected applied erasures) with randomly mixed sets, tenants, prompts and seeds."""
    rng = random.Random(1234)
    choices = [
        (ALPHA, [], []),
        (ALPHA, [world["A"]], [world["A"]]),
        (ALPHA, [world["B"]], [world["B"]]),
        (ALPHA, [world["A"], world["B"]], sorted([world["A"], world["B"]])),
        (ALPHA, [world["M"]], [world["M"]]),
        (BETA, [], [world["M"]]),
        (BETA, [world["C"]], sorted([world["C"], world["M"]])),
    ]
    prompts = ["a red circle", "a blue triangle", "a green square", "a yellow cross", "a purple pyramid"]
    out = []
    for i in range(count):
        key, erasures, applied = choices[i % len(choices)] if i < len(choices) else rng.choice(choices)
        body = {
            "prompt": rng.choice(prompts),
            "seed": rng.randrange(10**6),
            "steps": 4,
            "n": rng.choice([1, 1, 2]),
            "erasures": erasures,
        }
        out.append((key, body, applied))
    rng.shuffle(out)
    return out


async def _fire(server: LiveServer, requests: list[tuple[str, dict, list[str]]]) -> list[dict]:
    clients = {key: server.async_client(key) for key in KEYS}
    try:
        responses = await asyncio.gather(
            *(clients[key].post("/v1/images/generations", json=body) for key, body, _ in requests)
        )
    finally:
        for client in clients.values():
            await client.aclose()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json() for r in responses]


@pytest.mark.slow
def test_concurrent_mixed_sets_match_requests_alone(world: dict) -> None:
    server: LiveServer = world["server"]
    with server.client(ALPHA) as client:  # the sets really differ, so a mix-up would show in the bytes
        for name, prompt in (("A", "a red circle"), ("B", "a blue triangle")):
            body = {"prompt": prompt, "seed": 1, "steps": 4}
            plain = client.post("/v1/images/generations", json=body).json()["data"]
            erased = client.post("/v1/images/generations", json={**body, "erasures": [world[name]]}).json()["data"]
            assert plain != erased, f"erasure {name} does not change its own concept's images"
    requests = _requests(world, CONCURRENT)
    swaps_before = server.runtime.metrics.swaps.value(model="flux")
    together = asyncio.run(_fire(server, requests))
    swaps = server.runtime.metrics.swaps.value(model="flux") - swaps_before
    for (key, body, applied), answer in zip(requests, together, strict=True):
        with server.client(key) as client:
            alone = client.post("/v1/images/generations", json=body).json()
        assert answer["erasures"] == alone["erasures"] == applied
        assert answer["data"] == alone["data"], f"{key} {body} differs when run among concurrent requests"
    assert swaps < CONCURRENT / 2, f"{swaps} swaps for {CONCURRENT} requests: requests were not grouped by set"
