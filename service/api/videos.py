"""Video generation (Open-Sora) with per-request erasure sets, on the same runtime as images."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import PrincipalDep, ReadyRuntimeDep
from service.api.disconnect import unless_disconnected
from service.api.errors import ERROR_RESPONSES
from service.schemas import VideoData, VideoGenerationRequest, VideoGenerationResponse

router = APIRouter(prefix="/v1/videos", tags=["videos"])


@router.post("/generations", response_model=VideoGenerationResponse, responses=ERROR_RESPONSES)
async def create_video(
    body: VideoGenerationRequest, principal: PrincipalDep, runtime: ReadyRuntimeDep, request: Request
) -> VideoGenerationResponse:
    """Generate one clip with exactly the requested erasures (plus the tenant's mandatory ones) active."""
    result = await unless_disconnected(request, runtime.videos.generate(principal, body))
    return VideoGenerationResponse(
        created=result.created,
        data=[VideoData(b64_json=item.b64_json, format=item.format) for item in result.items],  # type: ignore[arg-type]
        erasures=result.erasures,
        seed=result.seed,
        size=result.size,
        num_frames=result.num_frames,
        fps=result.fps,
    )
