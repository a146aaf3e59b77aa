"""EraseAnything++ as a trained erasure method: runs as a queued job, produces the same artifact type as ICE."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import (
    TEMPLATES,
    ConceptSpec,
    fill,
    neutral_anchor,
    neutral_candidates,
    preserve_prompts,
)
from erasure_core.errors import InvalidConfigError
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress
from erasure_core.methods.common import expand
from erasure_core.methods.eraseanything import calibrate
from erasure_core.methods.eraseanything.config import EraseAnythingConfig
from erasure_core.methods.eraseanything.temporal import frame_residuals
from erasure_core.methods.eraseanything.trainer import EraseAnythingTrainer

logger = logging.getLogger(__name__)


def pick_preserve(ctx: MethodContext, spec: ConceptSpec, phrasings: list[str], cfg: EraseAnythingConfig) -> list[str]:
    """`preserve_images` preserve prompts, none naming the concept: the caller's `preserve` terms (in the concept's
    templates) fill up to half, the model's preserve corpus the rest; drawn with the job's seed."""
    rng = random.Random(cfg.seed)
    named = preserve_prompts(spec, phrasings, [])
    corpus = preserve_prompts(spec.model_copy(update={"preserve": ()}), phrasings, ctx.preserve_corpus)
    chosen = rng.sample(named, min(len(named), cfg.preserve_images // 2))
    rest = [p for p in corpus if p not in chosen]
    chosen += rng.sample(rest, min(len(rest), cfg.preserve_images - len(chosen)))
    if not chosen:
        raise InvalidConfigError("the preserve terms need at least one preserve prompt (give `preserve`)")
    return chosen


def measured_anchor(
    ctx: MethodContext,
    spec: ConceptSpec,
    cfg: EraseAnythingConfig,
    prompts: list[str],
    neighbours: tuple[str, ...] = (),
) -> tuple[str, dict[str, float]]:
    """The word that replaces the concept in its own prompts, and what was measured to choose it: the caller's anchor
    when named; else, of the neutral words (`concepts.neutral_candidates`) and the concept's `neighbours` (what
    expansion found the model reads near the concept and draws differently), the one the model at hand draws most
    differently from the concept (`calibrate.anchor_gaps`), with every word's gap. The default neutral word may draw
    the concept itself (a world's prior shape: on the fills world "a thing" draws a star in half its samples; the
    shapes world draws circles for all three neutral words), and a job anchored there pulls the concept back toward
    itself: anchored on "item" (gap 0.034), the shapes world's circle stayed in 78% of its samples; on its neighbour
    "triangles" (gap 0.185), in 6%. No gaps when there is nothing to choose (a named anchor, a style or attribute, or
    no `anchor_in_prompt`) or on video models (not measured there yet)."""
    words = [neutral_anchor(spec.concept, spec.kind, w) for w in neutral_candidates(spec.kind)]
    if spec.anchor is not None or not cfg.anchor_in_prompt or len(words) < 2 or ctx.family.video:
        return spec.anchor or words[0], {}
    gaps = calibrate.anchor_gaps(
        ctx.pipe, ctx.family.training, prompts, spec.concept, [*words, *neighbours], cfg.sample_steps, cfg.resolution
    )
    return max(gaps, key=gaps.__getitem__), gaps


class EraseAnything(ErasureMethod):
    """EraseAnything++ (arXiv 2603.00978): LoRA on text-stream Q/K trained with forget/retain losses and EUPMU."""

    name = "eraseanything"
    config_cls = EraseAnythingConfig
    trained = True
    max_concepts = 1  # one LoRA per concept: its losses are built around one concept word

    def compute(
        self,
        ctx: MethodContext,
        spec: ConceptSpec,
        config: Any,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        assert isinstance(config, EraseAnythingConfig)
        self.check_family(ctx.family)
        config = config.for_model(ctx.family.native_size(ctx.pipe), demo=ctx.model_id == "demo")
        started = time.perf_counter()
        found = expand(ctx, spec)
        phrasings = list(found.phrasings)
        prompts = [fill(t, spec.concept) for t in TEMPLATES[spec.kind] if "{}" in t]
        word, gaps = measured_anchor(ctx, spec, config, prompts, found.neighbours)
        # The word that replaces the concept in its own prompts, else ESD's unconditional target (the caller's anchor).
        anchor = word if config.anchor_in_prompt else fill("{}", spec.anchor or "")
        video = ctx.family.video
        preserve = pick_preserve(ctx, spec, phrasings, config) if config.uses_preserve_images else None
        # Opt-in for now: measured on three concepts only (README), and it does not yet meet the concept-only bars.
        adaptive = bool(config.adaptive) and not video
        trainer = EraseAnythingTrainer(
            ctx.pipe, ctx.family, config, spec.concept, prompts, phrasings[1:], anchor, preserve, adaptive
        )
        temporal: dict[str, Any] | None = None
        try:
            trainer.run(progress, checkpoints)
            if video:  # video: the trainer's own per-frame figure
                temporal = frame_residuals(trainer)
            deltas = {
                name: LowRankDelta(
                    a.detach().float().cpu().clone(), b.detach().float().cpu().clone(), trainer.lora.scale
                )
                for name, (a, b) in trainer.lora.params.items()
            }
        finally:
            trainer.lora.remove()
        stats: dict[str, Any] = {"steps": trainer.step, "train_s": round(time.perf_counter() - started, 2)}
        if temporal is not None:
            stats["temporal"] = temporal
        if gaps:
            stats.update(anchor=anchor, anchor_gaps=gaps)
        if trainer.measured:  # what the job measured on the model and chose from it
            stats["adaptive"] = trainer.measured
        return ErasureArtifact(deltas, self.metadata(ctx, spec, config, phrasings, stats=stats))
