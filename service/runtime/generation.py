"""What image and video generation share: request validation against the model and the settings, the erasure set
(requested plus the tenant's mandatory ones, fail-closed), seeds, and the per-model schedulers they queue on.

`ImageService` and `VideoService` subclass `GenerationService`, so both endpoints go through the same tenancy,
mandatory-policy, adapter-manager and scheduler code.
"""

from __future__ import annotations

import logging
import secrets

from erasure_core.adapters import ErasureSet
from service.errors import (
    ErasureNotFoundError,
    ErasureNotReadyError,
    InvalidRequestError,
    PayloadTooLargeError,
    PolicyConflictError,
)
from service.pipelines import ModelDefaults, PipelinePool
from service.runtime.quotas import Quotas
from service.runtime.scheduler import GenerationScheduler
from service.runtime.tenancy import Principal, Tenancy
from service.settings import Settings, parse_size
from service.store import ErasureStore, JobStatus, is_valid_id

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
        for erasure_id in self.tenancy.mandatory(principal):
            record = self.store.find(erasure_id)
            if record is not None and record.model != model:
                continue
            if record is None or record.status != JobStatus.succeeded:
                logger.error("mandatory erasure %s for tenant %s is unavailable", erasure_id, principal.tenant)
                raise ErasureNotReadyError(f"a mandatory erasure ({erasure_id}) required by policy is not available")
            mandatory.add(erasure_id)
        self._check_imports(chosen - mandatory, mandatory)
        return ErasureSet(chosen | mandatory)

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
