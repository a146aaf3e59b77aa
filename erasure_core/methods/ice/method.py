"""ICE glue: concept -> prompts -> embeddings per text space -> kernel -> low-rank deltas on the family's layers."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from erasure_core.adapters import get_linear
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.concepts import ConceptSpec, erase_and_anchor_prompts, preserve_prompts
from erasure_core.expansion import expand_concept
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress
from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.kernel import dissociation_operator, layer_delta

logger = logging.getLogger(__name__)


def _rows(states: torch.Tensor) -> torch.Tensor:
    return states.reshape(-1, states.shape[-1])


def _top_rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    """Drops near-zero rows (positions the concept does not change) and keeps the `limit` largest."""
    norms = x.norm(dim=1)
    keep = norms > norms.max() * 1e-3
    x, norms = x[keep], norms[keep]
    if len(x) > limit:
        x = x[norms.argsort(descending=True)[:limit]]
    return x


def _even_rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    if len(x) <= limit:
        return x
    return x[torch.linspace(0, len(x) - 1, limit).long()]


def encode_cached(ctx: MethodContext, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Encodes prompts through the family, memoising per prompt in the context (the corpus is encoded once)."""
    memo: dict[str, dict[str, torch.Tensor]] = ctx.cache.setdefault("encoded", {})
    missing = [p for p in dict.fromkeys(prompts) if p not in memo]
    for start in range(0, len(missing), 128):
        chunk = missing[start : start + 128]
        encoded = ctx.family.encode(ctx.pipe, chunk)
        for i, prompt in enumerate(chunk):
            memo[prompt] = {space: states[i] for space, states in encoded.items()}
    spaces = [s.name for s in ctx.family.text_spaces]
    return {s: torch.stack([memo[p][s] for p in prompts]) for s in spaces}


class ICE(ErasureMethod):
    """Instant Concept Erasure: a closed-form dissociation operator on the text-conditioning layers."""

    name = "ice"
    config_cls = ICEConfig
    trained = False

    def compute(
        self, ctx: MethodContext, spec: ConceptSpec, config: Any, progress: Progress | None = None
    ) -> ErasureArtifact:
        assert isinstance(config, ICEConfig)
        started = time.perf_counter()
        phrasings = expand_concept(
            ctx.pipe, ctx.family, spec.concept, spec.synonyms, mine=spec.expand, mine_k=config.mine_k,
            llm=ctx.llm if spec.expand else None,
        )
        erase, anchors = erase_and_anchor_prompts(phrasings, spec.kind, spec.anchor)
        preserve = preserve_prompts(spec, phrasings, ctx.preserve_corpus)
        enc_e = ctx.family.encode(ctx.pipe, erase)
        enc_a = ctx.family.encode(ctx.pipe, anchors)
        enc_p = encode_cached(ctx, preserve)
        encoded_at = time.perf_counter()
        deltas: dict[str, LowRankDelta] = {}
        ranks: dict[str, int] = {}
        for space in ctx.family.text_spaces:
            x_e = _top_rows(_rows(enc_e[space.name] - enc_a[space.name]), config.max_erase_rows)
            x_p = _even_rows(_rows(enc_p[space.name]), config.max_preserve_rows)
            v_e, m = dissociation_operator(
                x_e, x_p, alpha_e=config.alpha_erase, alpha_p=config.alpha_preserve, lam=config.lam,
                energy=config.energy, max_rank=config.max_rank,
            )
            ranks[space.name] = int(v_e.shape[1])
            for layer in space.layers:
                weight = get_linear(ctx.pipe.transformer, layer).weight.detach().float().cpu()
                a, b = layer_delta(weight, v_e, m)
                deltas[layer] = LowRankDelta(a, b, 1.0)
        solved_at = time.perf_counter()
        metadata = {
            "method": self.name,
            "family": ctx.family.name,
            "base_model": {"id": ctx.model_id, "layer_hash": ctx.layer_hash},
            "concept": spec.model_dump(mode="json"),
            "phrasings": phrasings,
            "params": config.model_dump(mode="json"),
            "stats": {
                "erase_prompts": len(erase),
                "preserve_prompts": len(preserve),
                "ranks": ranks,
                "encode_s": round(encoded_at - started, 4),
                "solve_s": round(solved_at - encoded_at, 4),
            },
        }
        if progress is not None:
            progress(1, 1, {})
        logger.info("ice erasure of %r: phrasings=%s ranks=%s", spec.concept, phrasings, ranks)
        return ErasureArtifact(deltas, metadata)
