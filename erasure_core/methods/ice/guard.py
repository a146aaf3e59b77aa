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
from collections.abc import Sequence
from typing import Any

import torch

from erasure_core.adapters import get_linear
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.concepts import ConceptSpec, preserve_prompts
from erasure_core.methods.base import MethodContext
from erasure_core.methods.common import (
    encode_cached,
    erase_rows,
    even_rows,
    flatten,
    paired_top_rows,
    with_also,
)
from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.kernel import dissociation_operator

logger = logging.getLogger(__name__)


def output_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows [n, in] -> what the layer produces from them without its bias, [n, out]."""
    return x.float() @ weight.float().T


def guard_delta(v_o: torch.Tensor, m: torch.Tensor) -> LowRankDelta:
    """Factors of the output map y <- y - V M V^T y: A = V^T [k, out], B = -V M [out, k]."""
    return LowRankDelta(v_o.T.contiguous(), -(v_o @ m).contiguous(), 1.0)


Concept = tuple[ConceptSpec, list[str]]  # a concept and the phrasings its erasure used


def concept_guard(
    ctx: MethodContext, concepts: Sequence[Concept], config: ICEConfig | None = None
) -> dict[str, LowRankDelta]:
    """One guard for every concept of a policy, solved jointly: module -> output-side delta.

    Jointly, because guards applied one after another disturb each other (on the fills world a style's guard put
    5-10% of the stars back that the star's guard had removed): one solve holds every concept's rows and every
    concept's preserve rows at once, as one ICE erasure of several concepts does. Each concept keeps its own push
    past its anchor (`eta`, ICE's automatic choice for its kind), folded into its target rows.
    """
    config = config or ICEConfig()
    expanded = [(spec, with_also(phrasings or [spec.concept], spec)) for spec, phrasings in concepts]
    preserve_scale = max(config.resolved_preserve_scale(spec) for spec, _ in concepts)
    every_phrasing = [p for _, phrasings in expanded for p in phrasings]
    erase: dict[str, list[torch.Tensor]] = {}
    target: dict[str, list[torch.Tensor]] = {}
    preserve_text: dict[str, None] = {}
    for spec, phrasings in expanded:
        erase_by_space, anchor_by_space, _ = erase_rows(ctx, spec, phrasings)  # preserve rows: joint, below
        eta = config.resolved_eta(spec)
        # ICE holds the preserve rows of each kind of concept with its own weight (firmer when pushing past the
        # anchor); in one solve the shared weight is the largest, and a concept that wants a lighter hold gets its
        # rows weighted up by as much instead (J sums squared row errors, so sqrt of the ratio on the rows).
        weight = (preserve_scale / config.resolved_preserve_scale(spec)) ** 0.5
        for space in ctx.family.text_spaces:
            x_c, x_a = paired_top_rows(erase_by_space[space.name], anchor_by_space[space.name], config.max_erase_rows)
            erase.setdefault(space.name, []).append(weight * x_c)
            target.setdefault(space.name, []).append(weight * (x_a - eta * (x_c - x_a)))  # past the anchor by eta
        # Preserve prompts naming any concept of the policy are left out: the guard must move those.
        preserve_text.update(dict.fromkeys(preserve_prompts(spec, every_phrasing, ctx.preserve_corpus)))
    preserve = encode_cached(ctx, list(preserve_text))
    kwargs: dict[str, Any] = config.kernel_kwargs(concepts[0][0], len(every_phrasing))
    kwargs["eta"] = 0.0
    kwargs["preserve_scale"] = preserve_scale
    guards: dict[str, LowRankDelta] = {}
    for space in ctx.family.text_spaces:
        x_c, x_t = torch.cat(erase[space.name]), torch.cat(target[space.name])
        x_p = even_rows(flatten(preserve[space.name]), config.max_preserve_rows)
        for layer in space.layers:
            weight = get_linear(ctx.pipe.transformer, layer).weight.detach().float().cpu()
            v_o, m = dissociation_operator(
                output_rows(x_c, weight), output_rows(x_t, weight), output_rows(x_p, weight), **kwargs
            )
            guards[layer] = guard_delta(v_o, m)
    names = [spec.concept for spec, _ in concepts]
    logger.info("guard of %s on %d layers (ranks %s)", names, len(guards), [d.rank for d in guards.values()])
    return guards


def artifact_concept(artifact: ErasureArtifact) -> Concept:
    """The concept an artifact erases and the phrasings it used, from its metadata."""
    meta = artifact.metadata
    spec = ConceptSpec.model_validate(meta["concept"])
    return spec, [p for p in meta.get("phrasings", []) if isinstance(p, str)]


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
