"""The mandatory policy holds above whatever a tenant's own erasures do, and the operator manages it over the API.

The attack (hardening issue): the operator erases "triangle" and makes it mandatory for alice; alice makes her own
erasure mapping "square" onto "triangle" and asks for "a red square". Erasure deltas add up on the same layers, so
without a guard her remap runs underneath the policy and draws triangles. Here the remaps are made BEFORE the policy
exists (so nothing could refuse them at creation), then the operator adds the policy over the API, without a
restart; every judged rate is over HTTP on the demo world, fixed seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from erasure_core.worlds import fills
from erasure_core.worlds.judge import SHAPE_CLASSES, judge_images
from erasure_core.worlds.shapes import COLOR_NAMES
from service.pipelines import PipelineHandle, PipelinePool, read_defaults
from service.settings import Settings

from .conftest import LiveServer, decode_png

OP, ALICE, BOB = "op-key-0123456789abcdef", "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
KEYS = {OP: "operator", ALICE: "alice", BOB: "bob"}
SEEDS_PER_COLOUR = 4


def shape_rate(client: httpx.Client, shape_word: str, target: str, erasures: list[str]) -> float:
    """Fraction of 'a <colour> <shape_word>' images (every colour, fixed seeds) the judge sees as `target`."""
    images = []
    for i, colour in enumerate(COLOR_NAMES):
        body = {"prompt": f"a {colour} {shape_word}", "n": SEEDS_PER_COLOUR, "seed": 100 * i, "erasures": erasures}
        response = client.post("/v1/images/generations", json=body)
        assert response.status_code == 200, response.text
        images += [decode_png(item["b64_json"]) for item in response.json()["data"]]
    verdict = judge_images(torch.stack(images))
    return sum(SHAPE_CLASSES[i] == target for i in verdict.shapes.tolist()) / len(images)


def create(client: httpx.Client, **body: object) -> str:
    response = client.post("/v1/erasures", json=body)
    assert response.status_code in (201, 202), response.text
    return response.json()["id"]


def wait_ready(client: httpx.Client, erasure_id: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/erasures/{erasure_id}").json()["status"]
        if status == "ready":
            return
        assert status in ("queued", "running"), status
        time.sleep(1.0)
    raise TimeoutError(erasure_id)


@pytest.fixture(scope="module")
def world(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    data_dir: Path = tmp_path_factory.mktemp("policy-data")
    server = start_server(data_dir, api_keys=KEYS)
    with server.client(OP) as op, server.client(ALICE) as alice, server.client(BOB) as bob:
        ids = {
            "policy": create(op, concept="triangle"),
            "remap": create(alice, concept="square", anchor="triangle"),
            # A chain: square -> "wedge" (a word the world never drew) -> triangle.
            "chain_a": create(alice, concept="square", anchor="wedge"),
            "chain_b": create(alice, concept="wedge", anchor="triangle"),
            # A trained LoRA remap (short: only its anchor matters to the policy, not how well it trained).
            "trained": create(
                alice,
                concept="square",
                anchor="triangle",
                method="eraseanything",
                options={"preset": "cpu", "steps": 4, "checkpoint_every": 4},
            ),
            "bob_own": create(bob, concept="cross"),
        }
        wait_ready(alice, ids["trained"])
        before = {
            "remap": shape_rate(alice, "square", "triangle", [ids["remap"]]),
            "chain": shape_rate(alice, "square", "triangle", [ids["chain_a"], ids["chain_b"]]),
        }
    yield {"server": server, "data_dir": data_dir, "before": before, **ids}
    server.stop()


def test_policy_routes_are_the_operators(world: dict) -> None:
    server: LiveServer = world["server"]
    with server.client(ALICE) as alice:
        for method, path, body in (
            ("GET", "/v1/policies", None),
            ("PUT", "/v1/policies/alice", {"erasures": [world["policy"]]}),
            ("DELETE", "/v1/policies/alice", None),
        ):
            response = alice.request(method, path, json=body)
            assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    with server.client(OP) as op:
        for tenant, body, status, code in (
            ("mallory", {"erasures": [world["policy"]]}, 404, "tenant_not_found"),  # no key belongs to it
            ("alice", {"erasures": [world["bob_own"]]}, 422, "invalid_request"),  # another tenant's erasure
            ("alice", {"erasures": ["er_" + "0" * 32]}, 404, "erasure_not_found"),
            ("alice", {"erasures": []}, 422, "invalid_request"),
            ("al ice", {"erasures": [world["policy"]]}, 422, "invalid_request"),
        ):
            response = op.put(f"/v1/policies/{tenant}", json=body)
            assert response.status_code == status, (tenant, body, response.text)
            assert response.json()["error"]["code"] == code
        assert op.get("/v1/policies").json()["data"] == []
        response = op.delete("/v1/policies/alice")
        assert response.status_code == 404 and response.json()["error"]["code"] == "policy_not_found"


def test_the_policy_holds_above_tenant_remaps(world: dict) -> None:
    server: LiveServer = world["server"]
    before = world["before"]
    # The attack is real: without a policy, alice's remaps draw triangles from "square" prompts.
    assert before["remap"] >= 0.5 and before["chain"] >= 0.5, before
    with server.client(OP) as op:
        response = op.put("/v1/policies/alice", json={"erasures": [world["policy"]]})
        assert response.status_code == 200, response.text
        assert response.json() == {"tenant": "alice", "erasures": [world["policy"]], "source": "api"}
    with server.client(ALICE) as alice, server.client(BOB) as bob:
        assert shape_rate(alice, "triangle", "triangle", []) <= 0.05
        # Every set holding an erasure mapped onto what the policy removes is refused (409), whatever its method
        # (a trained LoRA acts where no guard reaches) and however it is chained.
        for erasures in ([world["remap"]], [world["chain_a"], world["chain_b"]], [world["trained"]]):
            response = alice.post(
                "/v1/images/generations", json={"prompt": "a red square", "erasures": erasures, "steps": 2}
            )
            assert response.status_code == 409, (erasures, response.text)
            assert response.json()["error"]["code"] == "anchor_in_policy"
        # ("wedge", chain_a's anchor, is refused too: the model draws triangles for it.) Alice's erasures that do
        # not undo the policy still work beside it.
        onto_circle = create(alice, concept="square", anchor="circle")
        assert shape_rate(alice, "square", "circle", [onto_circle]) >= 0.8
        # Bob is under no policy: his triangles stay, and his own sets are his business.
        assert shape_rate(bob, "triangle", "triangle", []) >= 0.8


def test_new_erasures_cannot_undo_the_policy(world: dict) -> None:
    server: LiveServer = world["server"]
    with server.client(OP) as op:
        assert op.put("/v1/policies/alice", json={"erasures": [world["policy"]]}).status_code == 200
    with server.client(ALICE) as alice:
        count = len(alice.get("/v1/erasures").json()["data"])
        for body in (
            {"concept": "square", "anchor": "triangle"},
            {"concept": "square", "anchor": "pyramid"},  # a synonym: the model, not the spelling, decides
            {"concept": "circle", "anchor": "triangle", "method": "eraseanything", "options": {"preset": "cpu"}},
        ):
            response = alice.post("/v1/erasures", json=body)
            assert response.status_code == 409, (body, response.text)
            assert response.json()["error"]["code"] == "anchor_in_policy"
        assert create(alice, concept="square", anchor="circle")  # an anchor the policy leaves alone is fine
        assert len(alice.get("/v1/erasures").json()["data"]) == count + 1


def test_policy_persists_and_is_removed_without_restart(
    world: dict, start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server: LiveServer = world["server"]
    with server.client(OP) as op:
        assert op.put("/v1/policies/alice", json={"erasures": [world["policy"]]}).status_code == 200
        response = op.delete(f"/v1/erasures/{world['policy']}")
        assert response.status_code == 409 and response.json()["error"]["code"] == "erasure_in_policy"
    # A second server on the same data folder (a restart, or a replica) reads the same policy.
    other = start_server(world["data_dir"], api_keys=KEYS)
    try:
        with other.client(OP) as op:
            assert op.get("/v1/policies").json()["data"] == [
                {"tenant": "alice", "erasures": [world["policy"]], "source": "api"}
            ]
            assert op.delete("/v1/policies/alice").json() == {"tenant": "alice", "deleted": True}
    finally:
        other.stop()
    with server.client(ALICE) as alice:  # the first server sees the removal on its next request
        answer = alice.post("/v1/images/generations", json={"prompt": "a red triangle", "steps": 2})
        assert answer.status_code == 200 and answer.json()["erasures"] == []
        assert shape_rate(alice, "square", "triangle", [world["remap"]]) >= 0.5  # no policy: the remap is usable


# -- the second demo world: an object and a style, the same attack -----------------------------------------------


def fills_rate(client: httpx.Client, template: str, factor: str, value: str, erasures: list[str]) -> float:
    """Fraction of the template's images (every colour of the fills world, fixed seeds) judged `value` for
    `factor` ("shape" or "fill")."""
    from erasure_core.worlds.fills_judge import judge_fills

    images = []
    for i, colour in enumerate(fills.COLOR_NAMES):
        body = {"prompt": template.format(c=colour), "n": SEEDS_PER_COLOUR, "seed": 100 * i, "erasures": erasures}
        response = client.post("/v1/images/generations", json=body)
        assert response.status_code == 200, response.text
        images += [decode_png(item["b64_json"]) for item in response.json()["data"]]
    verdict = judge_fills(torch.stack(images))
    judged = verdict.shape_names() if factor == "shape" else [fills.FILLS[int(i)] for i in verdict.fills]
    return judged.count(value) / len(judged)


@pytest.fixture(scope="module")
def fills_server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from erasure_core.models import load_engine
    from erasure_core.worlds.fills_world import assemble_fills_world

    engine = load_engine("flux", str(assemble_fills_world(cache_dir)), device="cpu")
    settings = Settings(data_dir=tmp_path_factory.mktemp("fills-policy"), device="cpu", api_keys=KEYS)
    pool = PipelinePool({"flux": PipelineHandle("flux", engine, read_defaults(engine, settings, "flux"))})
    server = LiveServer(settings, pool).start()
    yield server
    server.stop()


def test_the_policy_holds_above_remaps_on_the_fills_world(fills_server: LiveServer) -> None:
    """An object ("star") and a style ("Velmora", which draws stripes), removed together by the operator's policy;
    alice's erasures mapped onto them, made before the policy, are refused under it."""
    heart, quillon = "a solid {c} heart", "a {c} hexagon in the style of Quillon"
    with fills_server.client(OP) as op, fills_server.client(ALICE) as alice:
        policy = [create(op, concept="star"), create(op, concept="Velmora", kind="style")]
        remaps = [
            create(alice, concept="heart", anchor="star"),
            create(alice, concept="Quillon", kind="style", anchor="Velmora"),
        ]
        assert fills_rate(alice, heart, "shape", "star", remaps) >= 0.5  # the attack is real
        assert fills_rate(alice, quillon, "fill", "striped", remaps) >= 0.5
        assert op.put("/v1/policies/alice", json={"erasures": policy}).status_code == 200
        assert fills_rate(alice, "a solid {c} star", "shape", "star", []) <= 0.05
        assert fills_rate(alice, "a {c} hexagon in the style of Velmora", "fill", "striped", []) <= 0.05
        for remap in remaps:
            response = alice.post("/v1/images/generations", json={"prompt": "a gold heart", "erasures": [remap]})
            assert response.status_code == 409 and response.json()["error"]["code"] == "anchor_in_policy"
        response = alice.post("/v1/erasures", json={"concept": "arrow", "anchor": "pentagram"})  # draws stars
        assert response.status_code == 409 and response.json()["error"]["code"] == "anchor_in_policy"
        # The rest of the world is untouched: other shapes and fills keep being drawn.
        assert fills_rate(alice, "a solid {c} crescent", "shape", "crescent", []) >= 0.9
        assert fills_rate(alice, "a {c} heart in the style of Quillon", "fill", "dotted", []) >= 0.9


def test_replicas_on_a_redis_store_share_the_policy(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two replicas with no shared folder (`ERASURE_STORE=redis`): a policy set through one holds on the other at its
    next request, and its erasure cannot be deleted through either."""
    import uuid

    import redis

    prefix = f"erasure-test-policy-{uuid.uuid4().hex[:8]}-"
    shared = {"api_keys": KEYS, "store": "redis", "redis_url": "redis://127.0.0.1:6379/0", "queue_prefix": prefix}
    a = start_server(tmp_path_factory.mktemp("replica-a"), **shared)
    b = start_server(tmp_path_factory.mktemp("replica-b"), **shared)
    try:
        with a.client(OP) as op_a, b.client(OP) as op_b, b.client(ALICE) as alice_b:
            policy = create(op_a, concept="triangle")
            assert op_a.put("/v1/policies/alice", json={"erasures": [policy]}).status_code == 200
            assert op_b.get("/v1/policies").json()["data"] == [
                {"tenant": "alice", "erasures": [policy], "source": "api"}
            ]
            answer = alice_b.post("/v1/images/generations", json={"prompt": "a red triangle", "steps": 2})
            assert answer.status_code == 200 and answer.json()["erasures"] == [policy]
            response = op_b.delete(f"/v1/erasures/{policy}")
            assert response.status_code == 409 and response.json()["error"]["code"] == "erasure_in_policy"
    finally:
        a.stop()
        b.stop()
        conn = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in conn.scan_iter(f"{prefix}*"):
            conn.delete(key)
