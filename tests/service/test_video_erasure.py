"""A trained (EraseAnything++) erasure on Open-Sora over real HTTP: created with `model: "open-sora"`, queued, trained
on the job runner, and used in `/v1/videos/generations`, where the per-frame judge sees the shape less in every frame.

A short run (the "cpu-video" preset with fewer steps and preserve images) keeps the test within the CI budget; the full
preset's figures are `bench/quality_video.py`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from erasure_core.worlds.video_metrics import frame_rates
from erasure_core.worlds.video_world import VIDEO_WORLD_WEIGHTS
from service.pipelines import PipelinePool
from service.settings import Settings

from .conftest import LiveServer, decode_png

logger = logging.getLogger(__name__)

ROUTE = "/v1/videos/generations"
STEPS = 8
TARGET, OTHER = "triangle", "square"
COLORS = ("red", "blue", "green", "yellow")
SEEDS = (0, 1)
# The "cpu-video" preset, shorter: 90 steps at a higher rate, a quarter of the preserve images. At 60 steps the
# per-frame drop sat on the bar (one clip of 8 either way when the mined synonyms changed by one word).
FAST = {
    "preset": "cpu-video",
    "steps": 90,
    "lr": 1e-2,
    "temporal_weight": 4.0,
    "preserve_images": 32,
    "preserve_batch": 8,
    "checkpoint_every": 20,
}
JOB_DEADLINE_S = 400.0


@pytest.fixture(scope="module")
def video_server(
    demo_pool: PipelinePool, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Flux plus the video demo world, loaded by the registered loader as the lifespan does, behind a live server."""
    if not (VIDEO_WORLD_WEIGHTS / "transformer" / "config.json").is_file():
        pytest.skip(f"video demo world weights are not committed ({VIDEO_WORLD_WEIGHTS})")
    load = Settings(device="cpu", dtype="float32", open_sora_model="demo", cache_dir=cache_dir, auth="off")
    pool = PipelinePool({**demo_pool.handles, **PipelinePool.load(load, models=("open-sora",)).handles})
    data_dir = tmp_path_factory.mktemp("video-ea")
    settings = Settings(data_dir=data_dir, device="cpu", open_sora_model="demo", cache_dir=cache_dir, auth="off")
    server = LiveServer(settings, pool).start()
    yield server
    server.stop()


def clips(client: httpx.Client, shape: str, erasures: list[str]) -> torch.Tensor:
    """One clip per colour x seed of "a {colour} {shape}", as frames [N, F, 3, H, W]."""
    out = []
    for color in COLORS:
        for seed in SEEDS:
            body = {
                "prompt": f"a {color} {shape}",
                "model": "open-sora",
                "steps": STEPS,
                "seed": seed,
                "erasures": erasures,
                "response_format": "frames",
            }
            answer = client.post(ROUTE, json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["erasures"] == sorted(erasures)
            out.append(torch.stack([decode_png(item["b64_json"]) for item in answer.json()["data"]]))
    return torch.stack(out)


def wait_ready(client: httpx.Client, erasure: dict) -> dict:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while erasure["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1.0)
        erasure = client.get(f"/v1/erasures/{erasure['id']}").json()
    return erasure


def test_eraseanything_on_open_sora_over_http(video_server: LiveServer) -> None:
    with video_server.client(timeout=300.0) as client:
        base = clips(client, TARGET, [])
        base_other = clips(client, OTHER, [])
        body = {"concept": TARGET, "model": "open-sora", "method": "eraseanything", "options": FAST}
        created = client.post("/v1/erasures", json=body)
        assert created.status_code == 202, created.text
        assert created.json()["model"] == "open-sora" and created.json()["method"] == "eraseanything"
        erasure = wait_ready(client, created.json())
        assert erasure["status"] == "ready", erasure
        erased = clips(client, TARGET, [erasure["id"]])
        erased_other = clips(client, OTHER, [erasure["id"]])
        lora = client.get(f"/v1/erasures/{erasure['id']}/lora")
    assert lora.status_code == 200 and len(lora.content) > 0
    temporal = erasure["metadata"]["stats"]["temporal"]
    assert len(temporal["frame_residual"]) == 3 and temporal["measured"].startswith("trainer"), temporal
    figures = {
        "base": frame_rates(base, TARGET),
        "erased": frame_rates(erased, TARGET),
        "other_base": frame_rates(base_other, OTHER),
        "other_erased": frame_rates(erased_other, OTHER),
        "trainer": temporal,
    }
    logger.info("Open-Sora EraseAnything++ over HTTP, per-frame rates: %s", figures)
    # The judged effect of a 90-step run (measured: 0.75-1.00 -> 0.125-0.375 per frame, 8 clips; the square kept):
    # lower in every frame, by half on average. It still leaks later in the clip: the full `cpu-video` run's
    # per-frame figures, with and without the temporal term, are bench/quality_video.py's.
    drops = [b - e for b, e in zip(figures["base"], figures["erased"], strict=True)]
    assert min(figures["base"]) >= 0.75, figures
    assert min(drops) >= 0.25 and sum(drops) / len(drops) >= 0.35, figures
    assert min(figures["other_erased"]) >= min(figures["other_base"]) - 0.25, figures
