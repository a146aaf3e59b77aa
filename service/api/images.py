"""Image generation (OpenAI images shape) with per-request erasure sets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import PrincipalDep, ReadyRuntimeDep
from service.api.schemas import ErrorResponse, ImageData, ImageGenerationRequest, ImageGenerationResponse

router = APIRouter(prefix="/v1/images", tags=["images"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 500, 503)
}


@router.post("/generations", response_model=ImageGenerationResponse, responses=_ERRORS)
async def create_images(
    body: ImageGenerationRequest, principal: PrincipalDep, runtime: ReadyRuntimeDep
) -> ImageGenerationResponse:
    """Generate images with exactly the requested erasures (plus the tenant's mandatory ones) active."""
    result = await runtime.images.generate(principal, body)
    return ImageGenerationResponse(
        created=result.created,
        data=[ImageData(b64_json=b64) for b64 in result.images_b64],
        erasures=result.erasures,
        seed=result.seed,
        size=result.size,
    )
