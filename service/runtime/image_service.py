"""Image generation requests: validation against the model and the settings, the erasure set, and PNG encoding."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from dataclasses import dataclass

import torch

from erasure_core.generation import GenerationParams, to_png_bytes
from service.api.schemas import MAX_SEED, ImageGenerationRequest
from service.errors import ErasureNotFoundError, ErasureNotReadyError, InvalidRequestError, PayloadTooLargeError
from service.runtime.pipelines import ModelDefaults, PipelinePool
from service.runtime.registry import ErasureStore, JobStatus, is_valid_id
from service.runtime.scheduler import GenerationScheduler
from service.runtime.tenancy import Principal, Tenancy
from service.settings import Settings, parse_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    created: int
    images_b64: list[str]
    erasures: list[str]
    seed: int
    size: str


class ImageService:
    def __init__(
        self,
        settings: Settings,
        pool: PipelinePool,
        store: ErasureStore,
        tenancy: Tenancy,
        schedulers: dict[str, GenerationScheduler],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.tenancy = tenancy
        self.schedulers = schedulers

    async def generate(self, principal: Principal, request: ImageGenerationRequest) -> GenerationResult:
        """Validates the request, queues it with its erasure set, and returns base64 PNGs."""
        handle = self.pool.get(request.model)
        self._check_prompt(request.prompt)
        width, height = self._size(request.size, handle.defaults)
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
        seed = secrets.randbelow(2**31) if request.seed is None else request.seed
        if seed + n - 1 > MAX_SEED:
            raise InvalidRequestError(f"seed + n - 1 must not exceed {MAX_SEED}")
        images = await self.schedulers[request.model].submit(
            erasures, [request.prompt] * n, [seed + i for i in range(n)], params
        )
        encoded = await asyncio.to_thread(_encode_pngs, images)
        return GenerationResult(int(time.time()), encoded, list(erasures), seed, f"{width}x{height}")

    def _check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.settings.max_prompt_chars:
            raise PayloadTooLargeError(
                f"prompt has {len(prompt)} characters; the limit is {self.settings.max_prompt_chars}"
            )
        if not prompt.strip():
            raise InvalidRequestError("prompt must contain a non-space character")

    def _size(self, size: str | None, defaults: ModelDefaults) -> tuple[int, int]:
        if size is None:
            return defaults.width, defaults.height
        try:
            width, height = parse_size(size)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        low, high, step = self.settings.min_image_side, self.settings.max_image_side, defaults.packing
        for name, value in (("width", width), ("height", height)):
            if not low <= value <= high or value % step:
                raise InvalidRequestError(
                    f"{name} {value} is out of range: it must be between {low} and {high} and a multiple of {step}"
                )
        return width, height

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.settings.default_steps
        if not 1 <= steps <= self.settings.max_steps:
            raise InvalidRequestError(f"steps must be between 1 and {self.settings.max_steps}, got {steps}")
        return steps

    def _count(self, n: int) -> int:
        if not 1 <= n <= self.settings.max_images:
            raise InvalidRequestError(f"n must be between 1 and {self.settings.max_images}, got {n}")
        return n

    def resolve_erasures(self, principal: Principal, requested: list[str], model: str) -> tuple[str, ...]:
        """The sorted, unique erasure set of a request: the requested ids plus the tenant's mandatory ones.

        Raises:
            ErasureNotFoundError: an id is malformed, unknown or not visible to the caller.
            ErasureNotReadyError: an erasure is not ready (mandatory ones included: the policy fails closed).
            InvalidRequestError: too many ids, or an erasure belongs to another model.
        """
        if len(requested) > self.settings.max_erasures_per_request:
            raise InvalidRequestError(f"at most {self.settings.max_erasures_per_request} erasures per request")
        chosen: set[str] = set()
        for erasure_id in requested:
            record = self.store.find(erasure_id) if is_valid_id(erasure_id) else None
            if record is None or not self.tenancy.can_see(principal, record):
                raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
            if record.model != model:
                raise InvalidRequestError(f"erasure {erasure_id} belongs to model {record.model!r}, not {model!r}")
            if record.status != JobStatus.succeeded:
                raise ErasureNotReadyError(f"erasure {erasure_id} is {record.status.value}, not ready")
            chosen.add(erasure_id)
        for erasure_id in self.tenancy.mandatory(principal):
            record = self.store.find(erasure_id)
            if record is not None and record.model != model:
                continue
            if record is None or record.status != JobStatus.succeeded:
                logger.error("mandatory erasure %s for tenant %s is unavailable", erasure_id, principal.tenant)
                raise ErasureNotReadyError(f"a mandatory erasure ({erasure_id}) required by policy is not available")
            chosen.add(erasure_id)
        return tuple(sorted(chosen))


def _encode_pngs(images: torch.Tensor) -> list[str]:
    return [base64.b64encode(to_png_bytes(image)).decode("ascii") for image in images]
