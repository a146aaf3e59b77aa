"""Video generation requests: validation against the video model and the settings, the erasure set, and encoding.

Goes through exactly the code images use (`GenerationService`: prompt and size checks, tenancy, mandatory policy,
then the model's scheduler and adapter manager), so a clip runs alone with exactly its own erasure set active.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from erasure_core.engines import VideoParams
from erasure_core.media import to_gif_bytes, to_mp4_bytes, to_png_bytes, to_webp_bytes
from service.errors import InvalidRequestError, ModelNotAvailableError
from service.pipelines import ModelDefaults
from service.runtime.generation import GenerationService
from service.runtime.quotas import generation_cost
from service.runtime.tenancy import Principal
from service.schemas import VideoGenerationRequest

logger = logging.getLogger(__name__)

FORMATS = ("mp4", "webp", "gif", "frames")


@dataclass(frozen=True)
class EncodedItem:
    b64_json: str
    format: str


@dataclass(frozen=True)
class VideoResult:
    created: int
    items: list[EncodedItem]
    erasures: list[str]
    seed: int
    size: str
    num_frames: int
    fps: int


def mp4_available() -> bool:
    """MP4 needs PyAV (`av`) on the server."""
    return importlib.util.find_spec("av") is not None


class VideoService(GenerationService):
    async def generate(self, principal: Principal, request: VideoGenerationRequest) -> VideoResult:
        """Validates the request, queues it with its erasure set, and returns the encoded clip (or its frames)."""
        handle = self.pool.get(request.model)
        defaults = handle.defaults
        if not defaults.is_video:
            raise ModelNotAvailableError(f"model {request.model!r} does not generate video")
        self._check_prompt(request.prompt)
        self._check_prompt(request.negative_prompt, allow_empty=True)
        if request.response_format == "mp4" and not mp4_available():
            raise InvalidRequestError("response_format 'mp4' needs PyAV on the server; ask for webp, gif or frames")
        width, height = self._size(request.size, defaults)
        num_frames = self._num_frames(request.num_frames, defaults)
        fps = self._fps(request.fps)
        params = VideoParams(
            steps=self._steps(request.steps),
            guidance_scale=request.guidance_scale,
            height=height,
            width=width,
            max_sequence_length=defaults.max_sequence_length,
            num_frames=num_frames,
            negative_prompt=request.negative_prompt,
        )
        erasures = self.resolve_erasures(principal, request.erasures, request.model)
        seed = self._seed(request.seed)
        cost = generation_cost(width, height, params.steps, num_frames)
        clips = await self.run_charged(principal, cost, request.model, erasures, [request.prompt], [seed], params)
        items = await asyncio.to_thread(encode_clip, clips[0], request.response_format, fps)
        return VideoResult(int(time.time()), items, list(erasures), seed, f"{width}x{height}", num_frames, fps)

    def _num_frames(self, num_frames: int | None, defaults: ModelDefaults) -> int:
        ratio = defaults.temporal_ratio or 1
        limit = self.settings.max_video_frames
        if num_frames is None:  # the native length, or the longest valid one within the server's limit
            native = defaults.num_frames or 1
            return native if native <= limit else 1 + (limit - 1) // ratio * ratio
        if num_frames < 1 or (num_frames - 1) % ratio or num_frames > limit:
            examples = ", ".join(str(1 + k * ratio) for k in range(1, 4) if 1 + k * ratio <= limit)
            raise InvalidRequestError(
                f"num_frames {num_frames} does not fit the model: it must be 1 + a multiple of {ratio} "
                f"(the VAE's temporal ratio; e.g. {examples}) and at most {limit}"
            )
        return num_frames

    def _fps(self, fps: int | None) -> int:
        if fps is None:
            return self.settings.default_fps
        low, high = self.settings.min_fps, self.settings.max_fps
        if not low <= fps <= high:
            raise InvalidRequestError(f"fps must be between {low} and {high}, got {fps}")
        return fps


def encode_clip(frames: torch.Tensor, response_format: str, fps: int) -> list[EncodedItem]:
    """Frames [F, 3, H, W] in [0, 1] as base64: one mp4 / webp / gif, or one PNG per frame (`frames`)."""
    if response_format == "frames":
        return [EncodedItem(_b64(to_png_bytes(frame)), "png") for frame in frames]
    encoders: dict[str, Callable[..., bytes]] = {"mp4": to_mp4_bytes, "webp": to_webp_bytes, "gif": to_gif_bytes}
    if response_format not in encoders:
        raise InvalidRequestError(f"response_format must be one of {FORMATS}, got {response_format!r}")
    return [EncodedItem(_b64(encoders[response_format](frames, fps=fps)), response_format)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
