"""API keys and tenants, operator-wide and mandatory erasures, and isolation under concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import LiveServer

KEYS = {"op-key": "operator", "alpha-key": "alpha", "beta-key": "beta"}
CONCURRENT = 72


@pytest.fixture(scope="module")
def world(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Erasures made on a first server; then a restart with a policy making the operator's erasure mandatory."""
    data_dir: Path = tmp_path_factory.mktemp("tenant-data")
    first = start_server(data_dir, api_keys=KEYS)
    ids = {}
    for name, key, concept in (
        ("M", "op-key", "square"),
        ("A", "alpha-key", "circle"),
        ("B", "alpha-key", "triangle"),
        ("C", "beta-key", "cross"),
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
    with server.client("alpha-key") as client:
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
    with server.client("op-key") as client:
        assert len(client.get("/v1/erasures").json()["data"]) == 4


def test_mandatory_erasure_is_applied_and_reported(world: dict) -> None:
    server: LiveServer = world["server"]
    body = {"prompt": "a green square", "seed": 11, "steps": 4}
    with server.client("beta-key") as beta, server.client("alpha-key") as alpha:
        forced = beta.post("/v1/images/generations", json=body).json()
        assert forced["erasures"] == [world["M"]]
        with_c = beta.post("/v1/images/generations", json={**body, "erasures": [world["C"]]}).json()
        assert with_c["erasures"] == sorted([world["C"], world["M"]])
        explicit = alpha.post("/v1/images/generations", json={**body, "erasures": [world["M"]]}).json()
        plain = alpha.post("/v1/images/generations", json=body).json()
    assert forced["data"] == explicit["data"] != plain["data"]


def _requests(world: dict, count: int) -> list[tuple[str, dict, list[str]]]:
    """(key, body, expected applied erasures) with randomly mixed sets, tenants, prompts and seeds."""
    rng = random.Random(1234)
    choices = [
        ("alpha-key", [], []),
        ("alpha-key", [world["A"]], [world["A"]]),
        ("alpha-key", [world["B"]], [world["B"]]),
        ("alpha-key", [world["A"], world["B"]], sorted([world["A"], world["B"]])),
        ("alpha-key", [world["M"]], [world["M"]]),
        ("beta-key", [], [world["M"]]),
        ("beta-key", [world["C"]], sorted([world["C"], world["M"]])),
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
    with server.client("alpha-key") as client:  # the sets really differ, so a mix-up would show in the bytes
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
