"""The engine every model shares: a loaded pipeline, its erasures, and the one place a set is activated.

An engine computes erasures (`erase`), holds them attached to its transformer (`attach` / `detach`), and generates.
`generate(..., erasures=...)` makes exactly that set active first (the Python API); `generate_active(...)` runs with
whatever set the engine's owner activated (the service's adapter manager activates under its pipeline lock, then
calls this), so a set is activated once per request and by one owner. Subclasses (one per model family's output:
`FluxEngine` images, `OpenSoraEngine` clips) implement `generate_active` and their size facts.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from erasure_core.adapters import AdapterHost, ErasureSet, layer_hash
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import EVERYDAY_PROMPTS, ConceptSpec
from erasure_core.expansion import LLMEndpoint
from erasure_core.families import get_family
from erasure_core.methods import MethodContext, Progress, get_method
from erasure_core.methods.common import prepare
from erasure_core.methods.ice.guard import artifact_concept, concept_guard, guard_response
from erasure_core.pipelines.loading import LoadedPipeline

logger = logging.getLogger(__name__)

Output = Literal["image", "video"]


@dataclass(frozen=True)
class GenerationParams:
    """Call parameters of one generation; None takes the model's own default (native size, text length)."""

    steps: int = 20
    guidance_scale: float | None = 3.5
    height: int | None = None
    width: int | None = None
    max_sequence_length: int | None = None


class ErasureEngine(ABC):
    """A loaded pipeline plus its attached erasures. Not thread-safe: the service serialises access per pipeline."""

    output: ClassVar[Output]

    def __init__(
        self,
        loaded: LoadedPipeline,
        preserve_corpus: Sequence[str] | None = None,
        llm: LLMEndpoint | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.family = get_family(loaded.family)
        corpus = [*EVERYDAY_PROMPTS, *loaded.preserve_corpus] if preserve_corpus is None else list(preserve_corpus)
        self.layer_hash = layer_hash(self.pipe.transformer, self.family.edited_layers)
        self.context = MethodContext(
            pipe=self.pipe,
            family=self.family,
            model_id=loaded.model_id,
            layer_hash=self.layer_hash,
            preserve_corpus=corpus,
            llm=llm,
            cache_dir=cache_dir,
        )
        self.host = AdapterHost.for_model(self.pipe.transformer)

    # -- size facts the service validates requests against -----------------------------------------------------

    @property
    def native_size(self) -> tuple[int, int]:
        """The model's native (height, width) in pixels."""
        return self.family.native_size(self.pipe)

    @property
    def max_sequence_length(self) -> int:
        return self.family.default_max_sequence_length(self.pipe)

    @property
    @abstractmethod
    def packing(self) -> int:
        """Image (frame) sides must be multiples of this."""

    # -- erasures ----------------------------------------------------------------------------------------------

    def erase(
        self,
        spec: ConceptSpec,
        method: str = "ice",
        options: dict[str, Any] | None = None,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        """Computes an erasure artifact (does not attach it). Every method runs on the base model: no erasure is
        active while it encodes, probes or trains (the caller holds the pipeline; the active set is () afterwards)."""
        impl = get_method(method)
        config = impl.parse_config(options)
        impl.check_spec(spec)
        impl.check_family(self.family)
        self.host.activate(())
        return impl.compute(self.context, spec, config, progress, checkpoints)

    def prepare(self) -> None:
        """Fills the model's caches that instant erasures read (`erasure_core.methods.common.prepare`), on the base
        model; the service calls it while warming up, so the first erasure request does not pay for them."""
        self.host.activate(())
        prepare(self.context)

    def attach(self, name: str, artifact: ErasureArtifact) -> bool:
        """Attaches an erasure (inactive until named in `generate` or `activate`); checks the base-model hash."""
        return self.host.attach(name, artifact, expected_hash=self.layer_hash)

    def detach(self, name: str) -> bool:
        return self.host.detach(name)

    def compute_guard(self, artifacts: Sequence[ErasureArtifact]) -> dict[str, LowRankDelta]:
        """One output-side guard for the concepts these artifacts record (`erasure_core.methods.ice.guard`): attached
        with `attach_guard` and activated as guarded, they hold above every other active delta on the
        text-conditioning layers. Reads only the base weights and the text encoders."""
        return concept_guard(self.context, [artifact_concept(a) for a in artifacts])

    def attach_guard(self, covers: Iterable[str], guard: dict[str, LowRankDelta]) -> None:
        self.host.attach_guard(covers, guard)

    def guard_response(self, guard: dict[str, LowRankDelta], prompts: Sequence[str]) -> float:
        """How far `guard` moves the text-conditioning outputs of `prompts` (see `guard_response`)."""
        return guard_response(self.context, guard, list(prompts))

    def activate(self, names: Iterable[str], guarded: Iterable[str] = ()) -> None:
        self.host.activate(names, guarded)

    @property
    def active(self) -> ErasureSet:
        return self.host.active

    # -- generation --------------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        erasures: Iterable[str] = (),
        guarded: Iterable[str] = (),
    ) -> torch.Tensor:
        """Generates with exactly `erasures` active (none by default; `guarded` of them through their guards): one
        output per (prompt, seed)."""
        self.host.activate(erasures, guarded)
        return self.generate_active(prompts, seeds, params)

    @abstractmethod
    def generate_active(
        self, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None
    ) -> torch.Tensor:
        """Generates with the set that is active now; images [N, 3, H, W] or clips [N, F, 3, H, W] in [0, 1]."""


def check_seeds(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; expected one seed per prompt")
