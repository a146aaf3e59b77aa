"""The erasure-method interface and its registry (one subpackage per method, like peft's tuners).

A method implements:
  - `config_cls`: a pydantic model of its hyperparameters (validated early; saved with the artifact);
  - `trained`: False for closed-form methods (computed inline), True for methods that run as queued jobs;
  - `compute(ctx, spec, config, progress)`: returns an `ErasureArtifact`;
  - optionally `check_config(ctx, config)`: refuses what the config points at (a file to import) before any write.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from erasure_core.artifacts import ErasureArtifact
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import MAX_CONCEPTS, ConceptSpec
from erasure_core.errors import InvalidConfigError, UnknownMethodError, UnsupportedMethodError
from erasure_core.expansion import LLMEndpoint
from erasure_core.families.base import ModelFamily

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class MethodContext:
    """What a method may use: the loaded pipeline, its family, its identity, and model-wide resources."""

    pipe: Any
    family: ModelFamily
    model_id: str
    layer_hash: str
    preserve_corpus: list[str] = field(default_factory=list)
    llm: LLMEndpoint | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # per-model memo (e.g. encoded preserve corpus)
    cache_dir: Path | None = None  # where on-disk caches go (the lexicon's); None: ERASURE_CACHE_DIR or ~/.cache


class ErasureMethod(ABC):
    name: ClassVar[str]
    config_cls: ClassVar[type[BaseModel]]
    trained: ClassVar[bool] = False
    max_concepts: ClassVar[int] = MAX_CONCEPTS  # how many concepts (`concept` + `also`) one erasure may remove

    def check_family(self, family: ModelFamily) -> None:
        """Refuses (UnsupportedMethodError) a model family this method cannot run on, before any work or write:
        by default, a trained method needs the family's training ops."""
        if self.trained and family.training is None:
            raise UnsupportedMethodError(
                f"method {self.name!r} needs training support, which the {family.name} family does not have yet"
            )

    def check_spec(self, spec: ConceptSpec) -> None:
        """Refuses a spec this method cannot compute (InvalidConfigError), before any work or write."""
        if len(spec.concepts) > self.max_concepts:
            raise InvalidConfigError(
                f"method {self.name!r} erases at most {self.max_concepts} concept(s) per erasure, "
                f"got {len(spec.concepts)}"
            )

    def check_config(self, ctx: MethodContext, config: BaseModel) -> None:
        """Refuses inputs the config points at (e.g. an imported file) before any write; by default nothing to do."""
        return None

    def parse_config(self, options: dict[str, Any] | None) -> BaseModel:
        """Validates method options; unknown keys and out-of-range values raise InvalidConfigError."""
        try:
            return self.config_cls.model_validate(options or {})
        except ValidationError as e:
            details = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise InvalidConfigError(f"invalid options for method {self.name!r}: {details}") from e

    def metadata(
        self, ctx: MethodContext, spec: ConceptSpec, config: BaseModel, phrasings: list[str], **extra: Any
    ) -> dict[str, Any]:
        """The artifact metadata every method records: method, family, base model, concept, phrasings, params."""
        return {
            "method": self.name,
            "family": ctx.family.name,
            "base_model": {"id": ctx.model_id, "layer_hash": ctx.layer_hash},
            "concept": spec.model_dump(mode="json"),
            "phrasings": phrasings,
            "params": config.model_dump(mode="json"),
            **extra,
        }

    @abstractmethod
    def compute(
        self,
        ctx: MethodContext,
        spec: ConceptSpec,
        config: BaseModel,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        """Computes the erasure. `progress(step, total, losses)` may raise to cancel; trained methods save and
        resume their state through `checkpoints` (closed-form methods ignore it)."""


_REGISTRY: dict[str, ErasureMethod] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*(-[a-z0-9_]+)*$")  # e.g. "co-erasing", as the API names it


def register_method(method: ErasureMethod) -> None:
    if not _NAME.match(method.name):
        raise ValueError(f"method name {method.name!r} must be lowercase snake_case (words may also be joined by '-')")
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method


def get_method(name: str) -> ErasureMethod:
    """A registered method by name. Import it from `erasure_core.methods`, whose import registers the built-ins."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; expected one of {sorted(_REGISTRY)}") from None
