"""End to end over real HTTP on the demo world: erase a shape, generate with and without it, manage erasures."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from erasure_core.worlds.judge import SHAPE_CLASSES, judge_images, load_judge
from erasure_core.worlds.shapes import COLOR_NAMES, caption

from .conftest import LiveServer, decode_png

TARGET_WORDS = ("triangle", "pyramid")  # the concept and the synonym the caller names
OTHER_SHAPES = ("circle", "square", "cross", "diamond")
SEEDS_PER_PROMPT = 2


def generate(client: httpx.Client, prompt: str, seed: int, erasures: Sequence[str] = (), n: int = 1) -> dict:
    body = {"prompt": prompt, "seed": seed, "n": n, "erasures": list(erasures)}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sweep(client: httpx.Client, prompts: Sequence[str], erasures: Sequence[str] = ()) -> tuple[torch.Tensor, list[str]]:
    """Every prompt with SEEDS_PER_PROMPT consecutive seeds; returns decoded images and the raw base64 PNGs."""
    images, raw = [], []
    for i, prompt in enumerate(prompts):
        answer = generate(client, prompt, seed=1000 + SEEDS_PER_PROMPT * i, erasures=erasures, n=SEEDS_PER_PROMPT)
        assert answer["erasures"] == sorted(erasures)
        raw += [item["b64_json"] for item in answer["data"]]
    images = torch.stack([decode_png(b64) for b64 in raw])
    return images, raw


def judged_rate(images: torch.Tensor, shape: str) -> float:
    verdict = judge_images(images, load_judge())
    return sum(1 for s in verdict.shapes.tolist() if SHAPE_CLASSES[s] == shape) / len(images)


def test_health_readiness_metrics(open_server: LiveServer) -> None:
    with open_server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready", "models": ["flux"]}
        text = client.get("/metrics").text
    for name in ("erasure_http_requests_total", "erasure_queue_depth", "erasure_adapter_swaps_total"):
        assert f"# TYPE {name}" in text
    assert 'route="/healthz",status="200"' in text


@pytest.mark.slow
def test_shape_erasure_end_to_end(open_server: LiveServer) -> None:
    target_prompts = [caption(w, c, t) for w in TARGET_WORDS for c in COLOR_NAMES for t in (0, 2, 4)]
    other_prompts = [caption(s, c, 0) for s in OTHER_SHAPES for c in COLOR_NAMES]
    with open_server.client() as client:
        base_target, base_raw = sweep(client, target_prompts)
        base_other, _ = sweep(client, other_prompts)

        started = time.perf_counter()
        response = client.post("/v1/erasures", json={"concept": "triangle", "synonyms": ["pyramid"]})
        elapsed = time.perf_counter() - started
        assert response.status_code == 201, response.text
        erasure = response.json()
        assert erasure["status"] == "ready" and erasure["id"].startswith("er_")
        # Closed form: ready inside the request. The speed target (about a second) lives in bench/ice.py; this bound
        # only catches a request that waits on something else (a queue, training), even on a loaded CI machine.
        assert elapsed < 30.0, f"ICE erasure took {elapsed:.2f} s"

        erased_target, _ = sweep(client, target_prompts, [erasure["id"]])
        erased_other, _ = sweep(client, other_prompts, [erasure["id"]])
        _, after_raw = sweep(client, target_prompts[:12])

    base_rate, erased_rate = judged_rate(base_target, "triangle"), judged_rate(erased_target, "triangle")
    verdict_base = judge_images(base_other, load_judge())
    verdict_erased = judge_images(erased_other, load_judge())
    expected = torch.tensor([SHAPE_CLASSES.index(s) for s in OTHER_SHAPES for _ in COLOR_NAMES for _ in "ab"])
    other_base = (verdict_base.shapes == expected).float().mean().item()
    other_erased = (verdict_erased.shapes == expected).float().mean().item()
    report = f"triangle {base_rate:.2f}->{erased_rate:.2f}, other shapes {other_base:.2f}->{other_erased:.2f}"
    assert base_rate >= 0.5, f"the demo world should draw triangles without the erasure ({report})"
    assert erased_rate <= 0.05, f"the erasure should remove triangles ({report})"
    assert other_erased >= other_base - 0.1, f"other shapes should survive the erasure ({report})"
    unaffected = after_raw == base_raw[: len(after_raw)]
    assert unaffected, "requests that do not name the erasure must be unaffected, byte for byte"


def test_erasure_lifecycle_and_lora_export(open_server: LiveServer) -> None:
    with open_server.client() as client:
        created = client.post(
            "/v1/erasures", json={"concept": "circle", "synonyms": ["disk"], "preserve": ["square"]}
        ).json()
        erasure_id = created["id"]
        got = client.get(f"/v1/erasures/{erasure_id}").json()
        assert got["status"] == "ready" and got["progress"] == 1.0 and got["scope"] == "tenant"
        assert got["concept"]["concept"] == "circle" and got["concept"]["synonyms"] == ["disk"]
        assert got["metadata"]["base_model"]["id"] == open_server.settings.flux_model
        assert got["timings"]["total_s"] >= got["timings"]["compute_s"] > 0
        assert erasure_id in [e["id"] for e in client.get("/v1/erasures").json()["data"]]

        lora = client.get(f"/v1/erasures/{erasure_id}/lora")
        assert lora.status_code == 200 and lora.headers["content-type"] == "application/octet-stream"
        tensors = load_safetensors(lora.content)
        assert tensors and all(k.startswith("transformer.") for k in tensors)
        assert {k.rsplit(".", 2)[-2] for k in tensors} == {"lora_A", "lora_B"}

        image = generate(client, "a red circle", seed=3, erasures=[erasure_id])
        assert base64.b64decode(image["data"][0]["b64_json"]).startswith(b"\x89PNG")
        assert image["size"] == "32x32" and image["seed"] == 3

        assert client.delete(f"/v1/erasures/{erasure_id}").json() == {
            "id": erasure_id,
            "object": "erasure",
            "deleted": True,
            "status": "deleted",
        }
        assert client.get(f"/v1/erasures/{erasure_id}").status_code == 404
        gone = client.post("/v1/images/generations", json={"prompt": "a red circle", "erasures": [erasure_id]})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "erasure_not_found"
    assert erasure_id not in open_server.runtime.managers["flux"].resident


def test_random_seed_is_reported_and_reproducible(open_server: LiveServer) -> None:
    with open_server.client() as client:
        first = client.post("/v1/images/generations", json={"prompt": "a blue square", "steps": 4}).json()
        replay = client.post(
            "/v1/images/generations", json={"prompt": "a blue square", "steps": 4, "seed": first["seed"]}
        ).json()
    assert replay["data"] == first["data"]


@pytest.mark.slow
def test_trained_erasure_is_queued_then_ready(open_server: LiveServer) -> None:
    """A trained (LoRA) method answers 202 queued, runs on the job runner, and becomes usable when ready."""
    options = {"steps": 2, "concept_images": 1, "sample_steps": 2, "checkpoint_every": 1}
    with open_server.client() as client:
        response = client.post("/v1/erasures", json={"concept": "cross", "method": "eraseanything", "options": options})
        assert response.status_code == 202, response.text
        erasure = response.json()
        assert erasure["status"] in ("queued", "running") and erasure["progress"] < 1.0
        deadline = time.monotonic() + 240
        while erasure["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            erasure = client.get(f"/v1/erasures/{erasure['id']}").json()
        assert erasure["status"] == "ready", erasure
        assert erasure["progress"] == 1.0 and erasure["timings"]["compute_s"] > 0
        image = generate(client, "a red cross", seed=1, erasures=[erasure["id"]])
        assert image["erasures"] == [erasure["id"]]
        lora = load_safetensors(client.get(f"/v1/erasures/{erasure['id']}/lora").content)
        assert any(".attn.add_q_proj.lora_A." in key for key in lora)


@pytest.mark.slow
def test_cancelling_an_embedded_job_stops_it_and_frees_the_runner(open_server: LiveServer) -> None:
    """Without Redis the same semantics hold: DELETE on a running job cancels it at its next step."""
    fast = {"concept_images": 1, "sample_steps": 2, "batch_size": 1}
    with open_server.client() as client:
        long = client.post(
            "/v1/erasures", json={"concept": "diamond", "method": "eraseanything", "options": {**fast, "steps": 5000}}
        ).json()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/erasures/{long['id']}").json()["step"] < 2:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        answer = client.delete(f"/v1/erasures/{long['id']}").json()
        assert answer == {"id": long["id"], "object": "erasure", "deleted": False, "status": "cancelled"}
        short = client.post(
            "/v1/erasures", json={"concept": "cross", "method": "eraseanything", "options": {**fast, "steps": 2}}
        ).json()
        while short["status"] in ("queued", "running"):
            assert time.monotonic() < deadline + 120, short
            time.sleep(0.2)
            short = client.get(f"/v1/erasures/{short['id']}").json()
        assert short["status"] == "ready"
        cancelled = client.get(f"/v1/erasures/{long['id']}").json()
        assert cancelled["status"] == "cancelled" and cancelled["step"] < 5000
