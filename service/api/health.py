"""Liveness, readiness and metrics: outside auth, so orchestrators and scrapers need no key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.api.deps import RuntimeDep
from service.schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (models may still be loading)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}})
def readyz(runtime: RuntimeDep) -> Readiness:
    """Pipelines are loaded and warmed up; 503 `not_ready` until then (or after a failed startup)."""
    runtime.check_ready()
    return Readiness(models=runtime.pool.names)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    """Prometheus metrics: requests, latency, swaps, adapter-cache hits, queue depth."""
    return PlainTextResponse(runtime.metrics.render(), media_type="text/plain; version=0.0.4")
