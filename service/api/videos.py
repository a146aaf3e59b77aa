"""Video generation (Open-Sora) with per-request erasure sets, on the same runtime as images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import PrincipalDep, ReadyRuntimeDep
from service.api.schemas import ErrorResponse, VideoData, VideoGenerationRequest, VideoGenerationResponse

router = APIRouter(prefix="/v1/videos", tags=["videos"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 500, 503)
}


@router.post("/generations", response_model=VideoGenerationResponse, responses=_ERRORS)
async def create_video(
    body: VideoGenerationRequest, principal: PrincipalDep, runtime: ReadyRuntimeDep
) -> VideoGenerationResponse:
    """Generate one clip with exactly the requested erasures (plus the tenant's mandatory ones) active."""
    result = await runtime.videos.generate(principal, body)
    return VideoGenerationResponse(
        created=result.created,
        data=[VideoData(b64_json=item.b64_json, format=item.format) for item in result.items],  # type: ignore[arg-type]
        erasures=result.erasures,
        seed=result.seed,
        size=result.size,
        num_frames=result.num_frames,
        fps=result.fps,
    )
