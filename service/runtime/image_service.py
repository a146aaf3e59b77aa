"""Image generation requests: validation against the model and the settings, the erasure set, and PNG encoding."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass

import torch

from erasure_core.engines import GenerationParams
from erasure_core.media import to_png_bytes
from service.errors import InvalidRequestError, ModelNotAvailableError
from service.runtime.generation import GenerationService
from service.runtime.quotas import generation_cost
from service.runtime.tenancy import Principal
from service.schemas import MAX_SEED, ImageGenerationRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    created: int
    images_b64: list[str]
    erasures: list[str]
    seed: int
    size: str


class ImageService(GenerationService):
    """Image generation (OpenAI images shape) over the shared validation, erasure set and scheduler."""

    async def generate(self, principal: Principal, request: ImageGenerationRequest) -> GenerationResult:
        """Validates the request, queues it with its erasure set, and returns base64 PNGs."""
        handle = self.pool.get(request.model)
        if handle.defaults.is_video:
            raise ModelNotAvailableError(
                f"model {request.model!r} generates video, not images: use POST /v1/videos/generations"
            )
        self._check_prompt(request.prompt)
        width, height = self._size(None if request.size == "auto" else request.size, handle.defaults)
        guidance = request.guidance_scale
        params = GenerationParams(
            steps=self._steps(request.steps),
            guidance_scale=self.settings.default_guidance_scale if guidance is None else guidance,
            height=height,
            width=width,
            max_sequence_length=handle.defaults.max_sequence_length,
        )
        n = self._count(request.n)
        erasures = self.resolve_erasures(principal, request.erasures, request.model)
        seed = self._seed(request.seed)
        if seed + n - 1 > MAX_SEED:
            raise InvalidRequestError(f"seed + n - 1 must not exceed {MAX_SEED}")
        cost = generation_cost(width, height, params.steps, n)
        images = await self.run_charged(
            principal, cost, request.model, erasures, [request.prompt] * n, [seed + i for i in range(n)], params
        )
        encoded = await asyncio.to_thread(_encode_pngs, images)
        return GenerationResult(int(time.time()), encoded, list(erasures), seed, f"{width}x{height}")

    def _count(self, n: int) -> int:
        if not 1 <= n <= self.settings.max_images:
            raise InvalidRequestError(f"n must be between 1 and {self.settings.max_images}, got {n}")
        return n


def _encode_pngs(images: torch.Tensor) -> list[str]:
    return [base64.b64encode(to_png_bytes(image)).decode("ascii") for image in images]
