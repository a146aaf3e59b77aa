"""The output-side guard of a concept: ICE solved on what the text-conditioning layers produce, not what they read.

Why: erasure deltas compose by addition on the same layers (`erasure_core.adapters`). An input-side edit of "circle"
acts on inputs that look like "circle"; an erasure that maps "square" onto "circle" produces circle-like outputs
from square-like inputs, which the circle edit never sees, so a tenant's remap runs underneath an operator's policy
(issue: "the mandatory policy can be bypassed", 82% circles). A guard is a low-rank map on the layer's output,
y <- y - V M V^T (y - b), applied after every input-side delta (`AdapterHost.attach_guard`): whatever produced a
circle-like output, the guard sends it where the erasure sends the circle.

It is the same kernel (`kernel.dissociation_operator`) with the same rows as an ICE erasure of the concept, each
row mapped through the layer first (X W^T; the bias is left out, since the guard acts on y - b): concept rows onto
their anchor rows (past them by eta), preserve rows held still. Every input the model treats alike gives the same
output, so nothing the input-side edit could tell apart is lost. It is computed from the concept and phrasings an
artifact records, so any erasure (ICE, UCE, a trained or imported LoRA) can be applied as a policy through it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from erasure_core.adapters import get_linear
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.concepts import ConceptSpec
from erasure_core.methods.base import MethodContext
from erasure_core.methods.common import concept_rows, even_rows, flatten, paired_top_rows, with_also
from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.kernel import dissociation_operator

logger = logging.getLogger(__name__)


def output_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows [n, in] -> what the layer produces from them without its bias, [n, out]."""
    return x.float() @ weight.float().T


def guard_delta(v_o: torch.Tensor, m: torch.Tensor) -> LowRankDelta:
    """Factors of the output map y <- y - V M V^T y: A = V^T [k, out], B = -V M [out, k]."""
    return LowRankDelta(v_o.T.contiguous(), -(v_o @ m).contiguous(), 1.0)


def concept_guard(
    ctx: MethodContext, spec: ConceptSpec, phrasings: list[str], config: ICEConfig | None = None
) -> dict[str, LowRankDelta]:
    """The guard of `spec`'s concept on every text-conditioning layer of the family: module -> output-side delta."""
    config = config or ICEConfig()
    phrasings = with_also(phrasings or [spec.concept], spec)
    rows = concept_rows(ctx, spec, phrasings)
    kwargs: dict[str, Any] = config.kernel_kwargs(spec, len(phrasings))
    guards: dict[str, LowRankDelta] = {}
    for space in ctx.family.text_spaces:
        x_c, x_a = paired_top_rows(rows.erase[space.name], rows.anchor[space.name], config.max_erase_rows)
        x_p = even_rows(rows.preserve[space.name], config.max_preserve_rows)
        for layer in space.layers:
            weight = get_linear(ctx.pipe.transformer, layer).weight.detach().float().cpu()
            v_o, m = dissociation_operator(
                output_rows(x_c, weight), output_rows(x_a, weight), output_rows(x_p, weight), **kwargs
            )
            guards[layer] = guard_delta(v_o, m)
    logger.info("guard of %r on %d layers (ranks %s)", spec.concept, len(guards), [d.rank for d in guards.values()])
    return guards


def artifact_guard(ctx: MethodContext, artifact: ErasureArtifact) -> dict[str, LowRankDelta]:
    """The guard of the concept an artifact erases, from the concept and phrasings its metadata records."""
    meta = artifact.metadata
    spec = ConceptSpec.model_validate(meta["concept"])
    phrasings = [p for p in meta.get("phrasings", []) if isinstance(p, str)]
    return concept_guard(ctx, spec, phrasings)


def guard_response(ctx: MethodContext, guard: dict[str, LowRankDelta], prompts: list[str]) -> float:
    """How far a guard moves what the text-conditioning layers produce for `prompts`: the largest relative move of
    any token row, ||G y|| / ||y||. The concept a guard was made for moves most; a word it leaves alone barely.

    Used to refuse an anchor that the guard's concept covers: an erasure mapped onto it would draw the guarded
    concept from the erasure's own prompts, through layers the guard does not reach (a trained LoRA's).
    """
    encoded = ctx.family.encode(ctx.pipe, prompts)
    response = 0.0
    for space in ctx.family.text_spaces:
        rows = flatten(encoded[space.name]).float()
        for layer in space.layers:
            delta = guard.get(layer)
            if delta is None:
                continue
            weight = get_linear(ctx.pipe.transformer, layer).weight.detach().float().cpu()
            produced = output_rows(rows, weight)
            moved = (produced @ delta.A.float().cpu().T) @ (delta.scale * delta.B.float().cpu()).T
            ratio = moved.norm(dim=1) / produced.norm(dim=1).clamp_min(1e-12)
            response = max(response, float(ratio.max()))
    return response
