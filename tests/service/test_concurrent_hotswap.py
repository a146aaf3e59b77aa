"""Image and video erasures hot-swapped under concurrent traffic over real HTTP: each answer equals its solo run.

One server serves the Flux demo world and the Open-Sora video demo world (the same pools `test_videos.py` builds).
ICE erasures are created on both models through `POST /v1/erasures`; then image and video requests with different
erasure sets (none, one, two) are first run one at a time, then all sent at once from threads (each request twice,
interleaved), and every concurrent answer must carry the same bytes (PNG images, PNG frames) as its solo run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from erasure_core.worlds.video_world import VIDEO_WORLD_WEIGHTS
from service.pipelines import PipelinePool
from service.settings import Settings

from .conftest import LiveServer

IMAGES, VIDEOS = "/v1/images/generations", "/v1/videos/generations"
IMAGE_BODY = {"prompt": "a red triangle", "seed": 7, "steps": 4}
VIDEO_BODY = {"prompt": "a blue circle", "seed": 5, "steps": 4, "response_format": "frames"}


@pytest.fixture(scope="module")
def server(demo_pool: PipelinePool, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Flux (the shared demo handle) and Open-Sora (the video demo world, loaded as the lifespan loads it)."""
    if not (VIDEO_WORLD_WEIGHTS / "transformer" / "config.json").is_file():
        pytest.skip(f"video demo world weights are not committed ({VIDEO_WORLD_WEIGHTS})")
    settings = Settings(device="cpu", dtype="float32", open_sora_model="demo", cache_dir=cache_dir, auth="off")
    video = PipelinePool.load(settings, models=("open-sora",))
    pool = PipelinePool({**demo_pool.handles, **video.handles})
    data_dir = tmp_path_factory.mktemp("hotswap-data")
    live = LiveServer(settings.model_copy(update={"data_dir": data_dir}), pool).start()
    yield live
    live.stop()


def _create(server: LiveServer, concept: str, model: str) -> str:
    with server.client() as client:
        response = client.post("/v1/erasures", json={"concept": concept, "model": model})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "ready"
    return str(response.json()["id"])


def _post(server: LiveServer, route: str, body: dict) -> dict:
    with server.client(timeout=600) as client:
        response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _swaps(server: LiveServer) -> dict[str, float]:
    return {model: server.runtime.metrics.swaps.value(model=model) for model in ("flux", "open-sora")}


def test_concurrent_image_and_video_requests_match_their_solo_runs(server: LiveServer) -> None:
    image_sets = [[], [_create(server, "triangle", "flux")]]
    image_sets.append([*image_sets[1], _create(server, "circle", "flux")])
    video_sets = [[], [_create(server, "circle", "open-sora")]]
    video_sets.append([*video_sets[1], _create(server, "square", "open-sora")])
    requests = [(IMAGES, {**IMAGE_BODY, "erasures": s}) for s in image_sets]
    requests += [(VIDEOS, {**VIDEO_BODY, "erasures": s}) for s in video_sets]

    solo = [_post(server, route, body)["data"] for route, body in requests]
    for group in (solo[:3], solo[3:]):  # every set changes the output, so a mix-up would show in the bytes
        assert len({repr(data) for data in group}) == 3

    order = [i for _ in range(2) for i in (0, 3, 1, 4, 2, 5)]  # image / video interleaved, each request twice
    start = threading.Barrier(len(order))

    def fire(i: int) -> dict:
        start.wait()  # all threads post at once: every request is in flight together
        return _post(server, *requests[i])

    before = _swaps(server)
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        answers = list(pool.map(fire, order))
    after = _swaps(server)
    for i, answer in zip(order, answers, strict=True):
        route, body = requests[i]
        assert answer["erasures"] == sorted(body["erasures"])
        assert answer["data"] == solo[i], f"{route} with {body['erasures']} differs under concurrent traffic"
    assert all(after[m] > before[m] for m in after), f"no hot-swap happened under the burst: {before} -> {after}"
    assert _post(server, *requests[0])["data"] == solo[0], "an erasure leaked into a later request without it"
