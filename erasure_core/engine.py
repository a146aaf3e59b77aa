"""The Python API: one loaded pipeline, its erasures, and generation with exactly the requested set active.

Example:
    >>> from erasure_core.engine import ErasureEngine
    >>> from erasure_core.concepts import ConceptSpec
    >>> engine = ErasureEngine.load("demo")
    >>> circle = engine.erase(ConceptSpec(concept="circle", synonyms=("disk",)))
    >>> engine.attach("circle", circle)
    >>> images = engine.generate(["a red circle"], seeds=[0], erasures=["circle"])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from erasure_core.adapters import AdapterHost, layer_hash
from erasure_core.artifacts import ErasureArtifact
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import EVERYDAY_PROMPTS, ConceptSpec
from erasure_core.expansion import LLMEndpoint
from erasure_core.families import get_family
from erasure_core.generation import GenerationParams, generate_images
from erasure_core.methods.base import MethodContext, Progress, get_method
from erasure_core.pipelines.loading import DEMO, LoadedPipeline, load_flux_pipeline

logger = logging.getLogger(__name__)


class ErasureEngine:
    """A loaded pipeline plus its attached erasures. Not thread-safe: the service serialises access per pipeline."""

    def __init__(
        self,
        loaded: LoadedPipeline,
        preserve_corpus: Sequence[str] | None = None,
        llm: LLMEndpoint | None = None,
    ) -> None:
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.family = get_family(loaded.family)
        corpus = list(EVERYDAY_PROMPTS) if preserve_corpus is None else list(preserve_corpus)
        if preserve_corpus is None and loaded.model_id == DEMO:
            from erasure_core.worlds.flux_world import world_preserve_corpus

            corpus += world_preserve_corpus()
        self.layer_hash = layer_hash(self.pipe.transformer, self.family.edited_layers)
        self.context = MethodContext(
            pipe=self.pipe,
            family=self.family,
            model_id=loaded.model_id,
            layer_hash=self.layer_hash,
            preserve_corpus=corpus,
            llm=llm,
        )
        self.host = AdapterHost.for_model(self.pipe.transformer)

    @classmethod
    def load(cls, model: str = DEMO, **kwargs: Any) -> ErasureEngine:
        """Loads a Flux pipeline (path, hub id or "demo") and wraps it."""
        return cls(load_flux_pipeline(model, **kwargs))

    def erase(
        self,
        spec: ConceptSpec,
        method: str = "ice",
        options: dict[str, Any] | None = None,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        """Computes an erasure artifact (does not attach it). Trained methods run with no erasure active."""
        impl = get_method(method)
        config = impl.parse_config(options)
        if impl.trained:
            self.host.activate([])
        return impl.compute(self.context, spec, config, progress, checkpoints)

    def attach(self, name: str, artifact: ErasureArtifact) -> bool:
        """Attaches an erasure (inactive until named in `generate` or `activate`); checks the base-model hash."""
        return self.host.attach(name, artifact, expected_hash=self.layer_hash)

    def detach(self, name: str) -> bool:
        return self.host.detach(name)

    def activate(self, names: Sequence[str]) -> None:
        self.host.activate(names)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        erasures: Sequence[str] = (),
    ) -> torch.Tensor:
        """Generates with exactly `erasures` active; images [N, 3, H, W] in [0, 1]."""
        self.host.activate(erasures)
        return generate_images(self.pipe, prompts, seeds, params)
