"""Image generation (OpenAI images shape) with per-request erasure sets."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import PrincipalDep, ReadyRuntimeDep
from service.api.disconnect import unless_disconnected
from service.api.errors import ERROR_RESPONSES
from service.schemas import ImageData, ImageGenerationRequest, ImageGenerationResponse

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post("/generations", response_model=ImageGenerationResponse, responses=ERROR_RESPONSES)
async def create_images(
    body: ImageGenerationRequest, principal: PrincipalDep, runtime: ReadyRuntimeDep, request: Request
) -> ImageGenerationResponse:
    """Generate images with exactly the requested erasures (plus the tenant's mandatory ones) active."""
    result = await unless_disconnected(request, runtime.images.generate(principal, body))
    return ImageGenerationResponse(
        created=result.created,
        data=[ImageData(b64_json=b64) for b64 in result.images_b64],
        erasures=result.erasures,
        seed=result.seed,
        size=result.size,
    )
