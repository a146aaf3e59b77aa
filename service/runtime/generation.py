"""What image and video generation share: request validation against the model and the settings, the erasure set
(requested plus the tenant's mandatory ones, fail-closed), seeds, and the per-model schedulers they queue on.

`ImageService` and `VideoService` subclass `GenerationService`, so both endpoints go through the same tenancy,
mandatory-policy, adapter-manager and scheduler code.
"""

from __future__ import annotations

import logging
import secrets

import torch

from erasure_core.adapters import ErasureSet
from erasure_core.engines import GenerationParams
from service.errors import (
    ErasureNotFoundError,
    ErasureNotReadyError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyConflictError,
    PolicyNotCoveredError,
)
from service.pipelines import ModelDefaults, PipelinePool
from service.runtime.quotas import Quotas
from service.runtime.scheduler import GenerationScheduler
from service.runtime.tenancy import Principal, Tenancy
from service.settings import Settings, parse_size
from service.store import ErasureRecord, ErasureStore, JobStatus, is_valid_id

logger = logging.getLogger(__name__)


class GenerationService:
    """Validation and erasure-set resolution shared by the generation endpoints."""

    def __init__(
        self,
        settings: Settings,
        pool: PipelinePool,
        store: ErasureStore,
        tenancy: Tenancy,
        schedulers: dict[str, GenerationScheduler],
        quotas: Quotas,
    ) -> None:
        self.quotas = quotas
        self.settings = settings
        self.pool = pool
        self.store = store
        self.tenancy = tenancy
        self.schedulers = schedulers

    async def run_charged(
        self,
        principal: Principal,
        cost: float,
        model: str,
        erasures: ErasureSet,
        prompts: list[str],
        seeds: list[int],
        params: GenerationParams,
    ) -> torch.Tensor:
        """Charges `cost` (`quotas.generation_cost`) to the tenant's quota, queues the request and waits for it. Work
        that never runs (refused by a full queue, or dropped because its client left) is not charged."""
        charge = self.quotas.charge_generation(principal, cost)
        try:
            return await self.schedulers[model].submit(
                erasures, prompts, seeds, params, on_drop=lambda: self.quotas.refund(charge)
            )
        except OverloadedError:
            self.quotas.refund(charge)
            raise

    @staticmethod
    def _seed(seed: int | None) -> int:
        return secrets.randbelow(2**31) if seed is None else seed

    def _check_prompt(self, prompt: str, allow_empty: bool = False) -> None:
        if len(prompt) > self.settings.max_prompt_chars:
            raise PayloadTooLargeError(
                f"prompt has {len(prompt)} characters; the limit is {self.settings.max_prompt_chars}"
            )
        if not allow_empty and not prompt.strip():
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

    def resolve_erasures(self, principal: Principal, requested: list[str], model: str) -> ErasureSet:
        """The erasure set of a request: the requested ids plus the tenant's mandatory ones.

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
        mandatory: set[str] = set()
        elsewhere: list[ErasureRecord] = []
        for erasure_id in self.tenancy.mandatory(principal):
            record = self.store.find(erasure_id)
            if record is not None and record.model != model:
                elsewhere.append(record)
                continue
            if record is None or record.status != JobStatus.succeeded:
                logger.error("mandatory erasure %s for tenant %s is unavailable", erasure_id, principal.tenant)
                raise ErasureNotReadyError(f"a mandatory erasure ({erasure_id}) required by policy is not available")
            mandatory.add(erasure_id)
        self._check_coverage(elsewhere, mandatory, model)
        self._check_imports(chosen - mandatory, mandatory)
        return ErasureSet(chosen | mandatory)

    def _check_coverage(self, elsewhere: list[ErasureRecord], mandatory: set[str], model: str) -> None:
        """A concept the policy removes from another model's outputs must be removed from this one's too: a Flux
        erasure cannot act on Open-Sora, so without an erasure of the same concept for this model the request is
        refused (fail closed), never run without it."""
        covered = {c for i in mandatory if (r := self.store.find(i)) is not None for c in _concepts(r)}
        missing = sorted({c for r in elsewhere for c in _concepts(r)} - covered)
        if missing:
            raise PolicyNotCoveredError(
                f"the mandatory policy removes {missing} but has no erasure of them for model {model!r}; "
                "the operator must add one before this tenant can use this model"
            )

    def _check_imports(self, requested: set[str], mandatory: set[str]) -> None:
        """A tenant's imported LoRA never runs under a mandatory policy (it could draw what the policy removes in
        layers no guard reaches); the operator's imports may. Anchors are checked where the set is activated."""
        if not mandatory:
            return
        for erasure_id in sorted(requested):
            record = self.store.find(erasure_id)
            if record is not None and record.method == "import" and record.tenant != self.tenancy.operator:
                raise PolicyConflictError(
                    f"erasure {erasure_id} is a tenant's imported LoRA; it cannot be used under a mandatory policy"
                )


def _concepts(record: ErasureRecord) -> set[str]:
    """The concepts an erasure record removes, case-folded (its main concept and `also`)."""
    spec = record.spec
    return {str(c).casefold() for c in [spec.get("concept"), *spec.get("also", [])] if c}
