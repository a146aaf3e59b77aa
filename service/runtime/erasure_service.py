"""Creating, reading, deleting and exporting erasures (no HTTP here: the routers call these methods).

Every input is validated before anything is written, so a rejected request changes nothing. Closed-form methods
(`trained=False`, ICE) run inline and come back `succeeded`; trained methods are queued on the job runner (and are
refused with 503 `queue_unavailable`, writing nothing, when the Redis queue cannot be reached).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors.torch import save

from erasure_core.concepts import ConceptSpec
from erasure_core.errors import NoMatchingModuleError
from erasure_core.methods import get_method
from service.errors import (
    ErasureNotFoundError,
    ErasureNotReadyError,
    InvalidRequestError,
    PolicyConflictError,
    QueueUnavailableError,
)
from service.jobs.runner import JobRunner
from service.pipelines import PipelineHandle, PipelinePool
from service.runtime.adapter_manager import AdapterManager
from service.runtime.quotas import Quotas
from service.runtime.tenancy import Principal, Tenancy
from service.runtime.uploads import UPLOAD_FIELDS, UploadLimits, accepted_uploads, upload_options
from service.schemas import ErasureCreate
from service.store import ErasureRecord, ErasureStore, JobStatus, RecordFinishedError, is_valid_id, new_id
from service.store_reports import report_store_for

logger = logging.getLogger(__name__)


def _concept_spec(request: ErasureCreate) -> ConceptSpec:
    try:
        return ConceptSpec(
            concept=request.concept,
            also=tuple(request.also),
            kind=request.kind,
            synonyms=tuple(request.synonyms),
            preserve=tuple(request.preserve),
            anchor=request.anchor,
            expand=request.expand,
        )
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidRequestError(f"invalid concept: {details}") from e


def _check_lora_targets(handle: PipelineHandle, config: object) -> None:
    """A trained method's `target_set` must name a LoRA target set of the model's family that matches its modules:
    checked at creation, so the request is refused instead of the job failing later."""
    target_set = getattr(config, "target_set", None)
    if target_set is None:
        return
    engine = handle.engine
    try:
        engine.family.resolve_lora_targets(engine.pipe.transformer, target_set)
    except NoMatchingModuleError as e:
        raise InvalidRequestError(f"options.target_set: {e}") from e


def _import_options(options: dict[str, Any], import_dir: Path | None) -> dict[str, Any]:
    """`method: import` options with the operator's import folder set: a caller names a file inside it (`path`)
    and never the folder itself."""
    if "import_dir" in options:
        raise InvalidRequestError("options.import_dir: set by the operator (ERASURE_IMPORT_DIR), not by a caller")
    if "path" not in options:
        return options
    if import_dir is None:
        raise InvalidRequestError(
            "options.path: importing by path is off (the operator has not set ERASURE_IMPORT_DIR)"
        )
    return {**options, "import_dir": str(import_dir.resolve())}


class ErasureService:
    def __init__(
        self,
        pool: PipelinePool,
        store: ErasureStore,
        runner: JobRunner,
        tenancy: Tenancy,
        managers: dict[str, AdapterManager],
        quotas: Quotas,
        import_dir: Path | None = None,
    ) -> None:
        self.quotas = quotas
        self.pool = pool
        self.store = store
        self.reports = report_store_for(store)
        self.runner = runner
        self.tenancy = tenancy
        self.managers = managers
        self.import_dir = import_dir
        # The settings' defaults; the runtime sets the configured ones.
        self.upload_limits = UploadLimits(max_images=16, max_image_bytes=4 * 1024**2, max_side=2048)

    async def create(self, principal: Principal, request: ErasureCreate) -> ErasureRecord:
        """Validates, records and runs (or queues) an erasure job; returns its record."""
        handle = self.pool.get(request.model)
        spec = _concept_spec(request)
        method = get_method(request.method)
        options = _import_options(request.options, self.import_dir) if method.name == "import" else request.options
        # Uploaded images are checked and decoded (off the event loop) before anything is written.
        uploads = {field: getattr(request, field) for field in UPLOAD_FIELDS}
        options = await asyncio.to_thread(
            upload_options, method.name, accepted_uploads(method.config_cls), uploads, options, self.upload_limits
        )
        config = method.parse_config(options)  # InvalidConfigError before anything is written
        method.check_spec(spec)
        method.check_family(handle.engine.family)
        _check_lora_targets(handle, config)
        # What the config points at (an imported LoRA) is read and checked against the model before any write.
        await asyncio.to_thread(method.check_config, handle.engine.context, config)
        await self._check_policy(principal, request.model, spec, method.name)
        # Nothing is awaited from the quota check to `store.add`: the event loop makes check and write one step, so
        # two concurrent requests cannot both take a tenant's last slot.
        self.quotas.check_new_erasure(principal, method.trained)
        if method.trained:
            self.runner.check_available()  # QueueUnavailableError (503) before anything is written
        record = ErasureRecord(
            id=new_id(),
            tenant=principal.tenant,
            model=request.model,
            method=method.name,
            spec=spec.model_dump(mode="json"),
            options=config.model_dump(mode="json"),
        )
        self.store.add(record)
        if not method.trained:
            return await asyncio.to_thread(self.runner.run_inline, record.id)
        try:
            self.runner.submit(record.id)
        except QueueUnavailableError:
            self.store.delete(record.id)  # a rejected request leaves nothing behind
            raise
        return self.store.get(record.id)

    async def _check_policy(self, principal: Principal, model: str, spec: ConceptSpec, method: str) -> None:
        """Refuses, before anything is written, what would undo the caller's mandatory policy: a LoRA import (it can
        draw anything, in layers no guard reaches) and an anchor that a mandatory erasure removes."""
        mandatory = [i for i in self.tenancy.mandatory(principal) if (r := self.store.find(i)) and r.model == model]
        if not mandatory or principal.is_operator:
            return
        if method == "import":
            raise PolicyConflictError(
                "a tenant under a mandatory policy cannot import LoRAs (a foreign LoRA could draw what the policy "
                "removes); ask the operator to import it"
            )
        manager = self.managers.get(model)
        if spec.anchor is None or manager is None:
            return
        conflicts = await asyncio.to_thread(manager.anchor_conflicts, spec.anchor, mandatory)
        if conflicts:
            raise PolicyConflictError(
                f"anchor {spec.anchor!r} is a concept your mandatory policy removes ({', '.join(conflicts)}); "
                "an erasure mapped onto it would draw it"
            )

    def get(self, principal: Principal, erasure_id: str) -> ErasureRecord:
        """The record, if it exists and the caller may see it; otherwise ErasureNotFoundError (never 'forbidden')."""
        record = self.store.find(erasure_id) if is_valid_id(erasure_id) else None
        if record is None or not self.tenancy.can_see(principal, record):
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        return record

    def list(self, principal: Principal) -> list[ErasureRecord]:
        return [r for r in self.store.list() if self.tenancy.can_see(principal, r)]

    def delete(self, principal: Principal, erasure_id: str) -> ErasureRecord | None:
        """Cancels a queued or running job (the record stays, `cancelled`, and is returned), or deletes a finished
        erasure with its reports (returns None)."""
        record = self.get(principal, erasure_id)
        self.tenancy.check_delete(principal, record)
        if not record.status.terminal:
            try:
                cancelled = self.store.update(
                    erasure_id, require_active=True, status=JobStatus.cancelled, finished_at=time.time(), eta_s=None
                )
            except RecordFinishedError:
                return self.delete(principal, erasure_id)  # it finished meanwhile: delete it like any other
            self.runner.cancel(erasure_id)
            logger.info("erasure %s cancelled by tenant %s", erasure_id, principal.tenant)
            return cancelled
        manager = self.managers.get(record.model)
        if manager is not None:
            manager.remove(erasure_id)  # waits for a generation using it to finish
        # Its reports (records and grids, any tenant's) go first: a crash in between leaves the erasure listed, and
        # deleting it again finishes the job, never reports of an erasure that is gone. A report job still running
        # stops at its next write (its record is gone).
        reports = self.reports.list(erasure_id)
        for report in reports:
            self.reports.delete(report.id)
        self.store.delete(erasure_id)
        logger.info("erasure %s and its %d reports deleted by tenant %s", erasure_id, len(reports), principal.tenant)
        return None

    def export_lora(self, principal: Principal, erasure_id: str) -> bytes:
        """The erasure as a diffusers-compatible LoRA state dict (safetensors bytes)."""
        record = self.get(principal, erasure_id)
        if record.status != JobStatus.succeeded:
            raise ErasureNotReadyError(f"erasure {erasure_id} is {record.status.value}, not ready")
        artifact = self.store.load_artifact(erasure_id)
        meta = {"format": "pt", "erasure_id": erasure_id, "erasure_content_hash": artifact.content_hash()}
        return save(artifact.to_diffusers_lora(), metadata=meta)
