"""EraseAnything++ as a trained erasure method: runs as a queued job, produces the same artifact type as ICE."""

from __future__ import annotations

import logging
import time
from typing import Any

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import TEMPLATES, ConceptSpec, fill
from erasure_core.errors import InvalidConfigError
from erasure_core.expansion import expand_concept
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress
from erasure_core.methods.eraseanything.config import EraseAnythingConfig
from erasure_core.methods.eraseanything.trainer import EraseAnythingTrainer

logger = logging.getLogger(__name__)


class EraseAnything(ErasureMethod):
    """EraseAnything++ (arXiv 2603.00978): LoRA on text-stream Q/K trained with forget/retain losses and EUPMU."""

    name = "eraseanything"
    config_cls = EraseAnythingConfig
    trained = True

    def compute(
        self,
        ctx: MethodContext,
        spec: ConceptSpec,
        config: Any,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        assert isinstance(config, EraseAnythingConfig)
        if ctx.family.training is None:
            raise InvalidConfigError(f"family {ctx.family.name!r} has no training support for {self.name}")
        started = time.perf_counter()
        phrasings = expand_concept(ctx.pipe, ctx.family, spec.concept, spec.synonyms, mine=spec.expand)
        prompts = [fill(t, spec.concept) for t in TEMPLATES[spec.kind] if "{}" in t]
        anchor = fill("{}", spec.anchor or "")  # ESD's unconditional target unless the caller names an anchor
        trainer = EraseAnythingTrainer(ctx.pipe, ctx.family, config, spec.concept, prompts, phrasings[1:], anchor)
        try:
            trainer.run(progress, checkpoints)
            deltas = {
                name: LowRankDelta(
                    a.detach().float().cpu().clone(), b.detach().float().cpu().clone(), trainer.lora.scale
                )
                for name, (a, b) in trainer.lora.params.items()
            }
        finally:
            trainer.lora.remove()
        stats = {"steps": trainer.step, "train_s": round(time.perf_counter() - started, 2)}
        return ErasureArtifact(deltas, self.metadata(ctx, spec, config, phrasings, stats=stats))
