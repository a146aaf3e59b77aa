"""Helpers shared by the closed-form methods: concept spec -> encoded erase, anchor and preserve rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.concepts import ConceptSpec, erase_and_anchor_prompts, preserve_prompts, protected_words
from erasure_core.expansion import REFERENCE_WORDS, Mined, expansion, probe_velocities
from erasure_core.lexicon import build_index, lexicon_size
from erasure_core.memo import PromptMemo
from erasure_core.methods.base import MethodContext

ENCODING_MEMO_BYTES = 512 * 2**20  # encoded prompts kept per model (the demo world's corpus is ~5 MB)
# Base-model velocities at the probe's latents kept per model (FLUX.1 at 1024 px: 2 MB a prompt; the demo: 32 KB).
VELOCITY_MEMO_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ConceptRows:
    """Per text space: erase rows, position-aligned anchor rows, and preserve rows, each [rows, d]."""

    erase: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    preserve: dict[str, torch.Tensor]
    n_erase: int
    n_preserve: int


def with_also(phrasings: list[str], spec: ConceptSpec) -> list[str]:
    """The main concept's phrasings followed by the spec's further concepts (`also`), without repeats."""
    return list(dict.fromkeys([*phrasings, *spec.also]))


def flatten(states: torch.Tensor) -> torch.Tensor:
    """[N, L, d] per-token states or [N, d] pooled vectors -> rows [N * L, d]."""
    return states.reshape(-1, states.shape[-1])


def paired_top_rows(x: torch.Tensor, anchor: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows where the concept differs from its anchor (largest differences first), kept in pairs."""
    norms = (x - anchor).norm(dim=1)
    keep = torch.nonzero(norms > norms.max() * 1e-3).squeeze(1)
    keep = keep[norms[keep].argsort(descending=True)[:limit]]
    return x[keep], anchor[keep]


def even_rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` rows, evenly spaced (deterministic subsampling)."""
    if len(x) <= limit:
        return x
    return x[torch.linspace(0, len(x) - 1, limit).long()]


def encode_cached(ctx: MethodContext, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Encodes prompts through the family, memoising per prompt in the context within a byte budget."""
    memo: PromptMemo = ctx.cache.setdefault("encoded", PromptMemo(ENCODING_MEMO_BYTES))
    found: dict[str, dict[str, torch.Tensor]] = {p: memo.get(p) for p in dict.fromkeys(prompts) if p in memo}
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    for start in range(0, len(missing), 128):
        chunk = missing[start : start + 128]
        encoded = ctx.family.encode(ctx.pipe, chunk)
        for i, prompt in enumerate(chunk):
            found[prompt] = {space: states[i].clone() for space, states in encoded.items()}
            memo.put(prompt, found[prompt])
    spaces = [s.name for s in ctx.family.text_spaces]
    return {s: torch.stack([found[p][s] for p in prompts]) for s in spaces}


def erase_rows(
    ctx: MethodContext, spec: ConceptSpec, phrasings: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """The encoded erase rows of a concept and their position-aligned anchor rows, per text space, and how many
    erase prompts they came from."""
    erase, anchors = erase_and_anchor_prompts(phrasings, spec.kind, spec.anchor)
    enc_e = ctx.family.encode(ctx.pipe, erase)
    enc_a = encode_cached(ctx, anchors)
    return {k: flatten(v) for k, v in enc_e.items()}, {k: flatten(v) for k, v in enc_a.items()}, len(erase)


def concept_rows(ctx: MethodContext, spec: ConceptSpec, phrasings: list[str]) -> ConceptRows:
    """Builds and encodes the erase, anchor and preserve prompt sets of a concept."""
    erase, anchor, n_erase = erase_rows(ctx, spec, phrasings)
    preserve = preserve_prompts(spec, phrasings, ctx.preserve_corpus)
    enc_p = encode_cached(ctx, preserve)
    return ConceptRows(
        erase=erase,
        anchor=anchor,
        preserve={k: flatten(v) for k, v in enc_p.items()},
        n_erase=n_erase,
        n_preserve=len(preserve),
    )


def velocity_memo(ctx: MethodContext) -> PromptMemo:
    """The model's base velocities at the velocity probe's fixed latents (`expansion.probe_velocities`), per prompt:
    shared by expansion and ICE's self-check, and kept across erasures (the reference words recur in every one)."""
    memo: PromptMemo = ctx.cache.setdefault("velocity", PromptMemo(VELOCITY_MEMO_BYTES))
    return memo


def reading_index(ctx: MethodContext) -> Any:
    """The model's reading index of the lexicon (`erasure_core.lexicon`), built once per model and kept in the
    context; None when the family cannot probe its model (no training ops), where mining falls back to the
    tokenizer's vocabulary."""
    if ctx.family.training is None:
        return None
    if "reading_index" not in ctx.cache:
        ctx.cache["reading_index"] = build_index(
            ctx.pipe, ctx.family, ctx.layer_hash, lexicon_size(), cache_dir=ctx.cache_dir
        )
    return ctx.cache["reading_index"]


def expand(ctx: MethodContext, spec: ConceptSpec, mine_k: int = 6) -> Mined:
    """The phrasings every method erases for `spec` (the concept, the caller's synonyms and, when the spec asks to
    expand, what the model itself draws like the concept: mined through its reading index, and the operator's LLM
    suggestions the model confirms) and the neighbours mining found. Words the preserve set uses are never mined."""
    return expansion(
        ctx.pipe,
        ctx.family,
        spec.concept,
        spec.synonyms,
        mine=spec.expand,
        mine_k=mine_k,
        llm=ctx.llm if spec.expand else None,
        exclude=protected_words(spec, ctx.preserve_corpus),
        index=reading_index(ctx) if spec.expand else None,
        memo=velocity_memo(ctx),
        also=spec.also,
    )


def holding(spec: ConceptSpec, found: Mined) -> ConceptSpec:
    """`spec` with the neighbours mining found added to its preserve terms: what the model reads near the concept
    but draws differently is held still by the closed-form methods."""
    if not found.neighbours:
        return spec
    return spec.model_copy(update={"preserve": (*spec.preserve, *found.neighbours)})


def prepare(ctx: MethodContext) -> None:
    """Computes once what every instant erasure of this model reads, so that the first erasure is as fast as the
    rest: the preserve corpus's encodings and, where the family can probe its model, the reading index (built from
    the lexicon the first time a model is seen on this machine, then read from the cache) and the everyday reference
    words' velocities."""
    encode_cached(ctx, list(ctx.preserve_corpus))
    if ctx.family.training is not None:
        reading_index(ctx)
        probe_velocities(ctx.pipe, ctx.family, [f"a {w}" for w in REFERENCE_WORDS], velocity_memo(ctx))
