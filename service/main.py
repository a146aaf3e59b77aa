"""Builds the FastAPI app and runs it (`erasure serve`).

Example:
    >>> from service.main import create_app
    >>> app = create_app()            # settings from ERASURE_* variables
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from erasure_core import __version__
from service.api import erasures, health, images, models, policies, reports, videos
from service.api.contract import install_contract
from service.api.errors import register_error_handlers
from service.api.events import redact_keys_in_access_log
from service.api.events import router as events_router
from service.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.api.playground import router as playground_router
from service.pipelines import ModelDefaults, PipelinePool
from service.runtime.events import EventStreams
from service.runtime.state import ServiceRuntime
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Erase concepts from Flux (and, where configured, Open-Sora) and generate with any set of erasures applied "
    'per request. Errors are `{"error": {"code", "message"}}` with stable codes. With API keys configured, '
    "send `Authorization: Bearer <key>`."
)


def create_app(settings: Settings | None = None, pool: PipelinePool | None = None) -> FastAPI:
    """The service app. Pipelines load in the lifespan, unless an already loaded `pool` is passed (tests)."""
    settings = settings or get_settings()
    runtime = ServiceRuntime(settings, pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="Concept Erasure Service", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.runtime = runtime
    register_error_handlers(app)
    routers = (erasures.router, reports.router, images.router, videos.router, models.router, policies.router)
    for router in (*routers, health.router):
        app.include_router(router)
    # Server-sent progress events and the playground page: outside the OpenAPI contract (see their modules).
    app.state.events = EventStreams(runtime.erasures, runtime.tenancy.operator, runtime.reports.list)
    app.include_router(events_router)
    redact_keys_in_access_log()
    app.include_router(playground_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # The published spec is this deployment's: its limits and served models (see service/api/contract.py).
    install_contract(app, settings, runtime.catalog.names, lambda name: _defaults(runtime, name))
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    return app


def _defaults(runtime: ServiceRuntime, name: str) -> ModelDefaults | None:
    handle = runtime.pool.handles.get(name)
    return handle.defaults if handle is not None else None


def run_server(host: str | None = None, port: int | None = None) -> None:
    """Serves the app with uvicorn; `host`/`port` override ERASURE_HOST/ERASURE_PORT."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
