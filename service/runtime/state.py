"""The service's heavy objects, built once: pipelines, store, adapter managers, schedulers, services, readiness.

`start()` recovers the store at once (so erasures are listable immediately) and loads and warms the pipelines in
the background: `/healthz` answers while models load, `/readyz` and the model-backed routes answer 503 `not_ready`
until a warm-up generation has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time

from erasure_core.engines import GenerationParams
from service.errors import NotReadyError
from service.jobs.runner import JobRunner, create_runner
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.runtime.adapter_manager import AdapterManager
from service.runtime.erasure_service import ErasureService
from service.runtime.image_service import ImageService
from service.runtime.models import ModelCatalog, ServedModel
from service.runtime.policy import PolicyBook, policy_storage
from service.runtime.policy_service import PolicyService
from service.runtime.quotas import Quotas
from service.runtime.report_service import ReportService
from service.runtime.scheduler import GenerationScheduler
from service.runtime.tenancy import Tenancy
from service.runtime.uploads import UploadLimits
from service.runtime.video_service import VideoService
from service.settings import Settings
from service.store_redis import open_store

logger = logging.getLogger(__name__)


class ServiceRuntime:
    """Everything a request needs, reachable from `app.state.runtime`."""

    def __init__(self, settings: Settings, pool: PipelinePool | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.policy = PolicyBook(settings, policy_storage(settings))
        self.tenancy = Tenancy(settings, self.policy)
        self.store = open_store(settings)
        self.pool = pool or PipelinePool()
        self.runner: JobRunner = create_runner(settings, self.pool, self.store, self.metrics)
        self._preloaded = pool is not None
        self.managers: dict[str, AdapterManager] = {}
        self.schedulers: dict[str, GenerationScheduler] = {}
        self.quotas = Quotas(settings, self.store, self.metrics)
        self.erasures = ErasureService(
            self.pool, self.store, self.runner, self.tenancy, self.managers, self.quotas, settings.import_dir
        )
        self.erasures.upload_limits = UploadLimits(
            settings.upload_max_images, settings.upload_max_image_bytes, settings.upload_max_side
        )
        self.policies = PolicyService(self.policy, self.store, self.tenancy)
        self.reports = ReportService(settings, self.store, self.runner, self.tenancy)
        self.images = ImageService(settings, self.pool, self.store, self.tenancy, self.schedulers, self.quotas)
        self.videos = VideoService(settings, self.pool, self.store, self.tenancy, self.schedulers, self.quotas)
        self.catalog = ModelCatalog(settings, self.pool, preloaded=pool is not None, created=int(time.time()))
        self.ready = False
        self.failure: str | None = None
        self._startup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Unfinished jobs are not failed: they resume once the pipelines are loaded (or on the queue's workers).
        self.store.recover(interrupt_unfinished=False, shared=bool(self.settings.redis_url))
        for entry in self.policy.entries():
            missing = [i for i in entry.erasures if self.store.find(i) is None]
            if missing:
                logger.warning("mandatory erasures for tenant %s do not exist yet: %s", entry.tenant, missing)
        self._startup = asyncio.get_running_loop().create_task(self._load_and_warm(), name="startup")

    async def _load_and_warm(self) -> None:
        started = time.perf_counter()
        try:
            if not self._preloaded:
                loaded = await asyncio.to_thread(PipelinePool.load, self.settings)
                self.pool.handles.update(loaded.handles)
            for name, handle in self.pool.handles.items():
                manager = AdapterManager(
                    handle, self.store, self.settings.adapter_cache_bytes, self.metrics, self.policy.erasure_ids
                )
                self.managers[name] = manager
                scheduler = GenerationScheduler(manager, self.metrics, self.settings.max_queue, self.settings.max_skips)
                scheduler.start()
                self.schedulers[name] = scheduler
            if self.settings.warmup:
                await asyncio.to_thread(self._warm_up)
            resumed = await asyncio.to_thread(self.runner.resume)
            if resumed:
                logger.info("resumed %d unfinished erasure jobs", resumed)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            logger.exception("startup failed; the service will not become ready")
            return
        self.ready = True
        logger.info("ready in %.1f s: models %s", time.perf_counter() - started, self.pool.names)

    def _warm_up(self) -> None:
        """One tiny generation per model, then the model's erasure caches (`ErasureEngine.prepare`: the encoded
        preserve corpus, the reading index, the reference velocities)."""
        for name, handle in self.pool.handles.items():
            defaults = handle.defaults
            params = GenerationParams(
                steps=1, height=defaults.height, width=defaults.width, max_sequence_length=defaults.max_sequence_length
            )
            with self.managers[name].use(()) as active:
                active.engine.generate_active(["warm-up"], [0], params)
            with handle.erase_lock, handle.lock:  # as a closed-form erasure holds them
                handle.engine.prepare()
            logger.info("warmed up %s", name)

    def check_ready(self) -> None:
        """Raises NotReadyError unless pipelines are loaded and warm."""
        if not self.ready:
            reason = f"startup failed: {self.failure}" if self.failure else "models are loading and warming up"
            raise NotReadyError(f"the service is not ready ({reason})")

    def models(self) -> list[ServedModel]:
        """The models this deployment serves (listed while they load; `ready` once the service is)."""
        return self.catalog.list(self.ready)

    def model(self, name: str) -> ServedModel:
        """One served model. Raises ModelNotFoundError for a model not served here."""
        return self.catalog.get(name, self.ready)

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        for scheduler in self.schedulers.values():
            await scheduler.stop()
        for manager in self.managers.values():
            await asyncio.to_thread(manager.close)
        self.runner.close()
