"""Concept expansion: turning one concept into the phrasings an erasure must cover.

Three sources, in order: (a) synonyms the caller gives; (b) neighbours mined offline from the model's own text
encoder — vocabulary entries whose input embeddings lie nearest the concept, re-ranked by the similarity of their
encoded prompts; (c) optionally an LLM behind an OpenAI-compatible chat endpoint (off unless a URL is configured).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from erasure_core.errors import ExpansionError
from erasure_core.lexicon import encode_means, read_means, semantic_of, vocabulary_entries
from erasure_core.memo import PromptMemo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMEndpoint:
    """An OpenAI-compatible chat-completions endpoint used for expansion."""

    url: str
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout_s: float = 20.0
    max_items: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LLMEndpoint | None:
        """The operator's endpoint from `ERASURE_LLM_URL` / `_MODEL` / `_API_KEY` / `_TIMEOUT_S` (the variables the
        service's settings read), or None when no URL is set. For the command line."""
        url = env.get("ERASURE_LLM_URL", "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ExpansionError(f"ERASURE_LLM_URL must be an http(s) URL, got {url!r}")
        return cls(
            url=url,
            model=env.get("ERASURE_LLM_MODEL") or cls.model,
            api_key=env.get("ERASURE_LLM_API_KEY") or None,
            timeout_s=float(env.get("ERASURE_LLM_TIMEOUT_S") or cls.timeout_s),
        )


def _shortlist(pipe: Any, concept: str, exclude: set[str], size: int) -> list[str]:
    """Whole-word vocabulary entries nearest the concept by input-embedding cosine (mean over its word pieces)."""
    tokenizer, encoder = pipe.tokenizer_2, pipe.text_encoder_2
    table = encoder.get_input_embeddings().weight.detach().float().cpu()
    piece_ids = tokenizer(concept, add_special_tokens=False).input_ids
    if not piece_ids:
        return []
    query = table[piece_ids].mean(0, keepdim=True)
    entries = vocabulary_entries(tokenizer)
    words, ids = [word for word, _ in entries], [idx for _, idx in entries]
    sims = F.cosine_similarity(table[ids], query)
    blocked = exclude | set(concept.lower().split())
    return [words[i] for i in sims.argsort(descending=True).tolist() if words[i] not in blocked][:size]


def _encoder_scores(pipe: Any, family: Any, concept: str, words: list[str]) -> torch.Tensor:
    """Similarity of the encoded prompts "a photo of a {word}" to the concept's, over every text space."""
    encoded = family.encode(pipe, [f"a photo of a {w}" for w in [concept, *words]])
    score = torch.zeros(len(words))
    for states in encoded.values():
        flat = states.reshape(states.shape[0], -1)
        flat = flat - flat.mean(0, keepdim=True)  # the shared template part says nothing about the word
        score += F.cosine_similarity(flat[1:], flat[:1])
    return score / len(encoded)


# Everyday words that stand for "anything else": the probe's centre when it checks a few candidates, whose own mean
# would otherwise be the centre (a list of true synonyms would then score each other down).
REFERENCE_WORDS = ("dog", "car", "house", "tree", "person", "cup", "chair", "bird", "boat", "flower", "book", "shoe")


# The velocity probe's fixed noisy latents: two noise levels of the sampler's range, one seeded draw.
PROBE_SIGMAS = (0.9, 0.6)
PROBE_BATCH = 128  # prompts encoded and run through the transformer at once


@torch.no_grad()
def probe_response(pipe: Any, family: Any, cond: Any) -> torch.Tensor:
    """The model's velocities for encoded prompts `cond` at the probe's fixed latents, flattened [prompts, features]
    (both noise levels side by side)."""
    ops = family.training
    latents = ops.noise(pipe, len(PROBE_SIGMAS), torch.Generator().manual_seed(0))
    n = cond.tokens.shape[0]
    out = []
    for j, sigma in enumerate(PROBE_SIGMAS):
        x = latents[j : j + 1].expand(n, -1, -1)
        s = torch.full((n,), sigma, device=x.device, dtype=x.dtype)
        out.append(ops.velocity(pipe, x, s, cond).flatten(1).float().cpu())
    return torch.cat(out, dim=1)


def probe_velocities(pipe: Any, family: Any, prompts: list[str], memo: PromptMemo | None = None) -> torch.Tensor:
    """`probe_response` of prompts by text, each computed once per `memo` (the model's, kept across erasures)."""
    found = {p: memo.get(p)["v"] for p in dict.fromkeys(prompts) if memo is not None and p in memo}
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    for start in range(0, len(missing), PROBE_BATCH):
        chunk = missing[start : start + PROBE_BATCH]
        v = probe_response(pipe, family, family.training.encode_text(pipe, chunk))
        for prompt, row in zip(chunk, v, strict=True):
            found[prompt] = row.clone()
            if memo is not None:
                memo.put(prompt, {"v": found[prompt]})
    return torch.stack([found[p] for p in prompts])


def _probe_scores(
    pipe: Any,
    family: Any,
    concept: str,
    words: list[str],
    reference: tuple[str, ...] = (),
    memo: PromptMemo | None = None,
) -> torch.Tensor:
    """How much each word moves the generator the way the concept does.

    At fixed noisy latents, the velocity for "a {word}" minus the velocity for a neutral prompt is compared
    (cosine) with the same difference for the concept. Words the model draws like the concept ("functional
    synonyms", e.g. a rare word the training captions used for it) score high even when the text encoder alone
    does not place them near the concept.
    """
    v = probe_velocities(pipe, family, [f"a {w}" for w in [concept, *words, *reference]], memo)
    # Centre on the reference words' (or, without them, the candidates') mean response: any noun moves the model in
    # a shared way, which says nothing about the concept.
    candidates = v[1 : 1 + len(words)]
    centre = (v[1 + len(words) :] if reference else candidates).mean(0, keepdim=True)
    return F.cosine_similarity(candidates - centre, v[:1] - centre)


def mine_neighbours(
    pipe: Any,
    family: Any,
    concept: str,
    k: int = 6,
    exclude: set[str] | None = None,
    shortlist: int = 1000,
    probe: bool = True,
    min_score: float = 0.5,
) -> list[str]:
    """The `k` vocabulary words nearest `concept` in the model's own text pathway (no reading index).

    Stage 1 shortlists whole-word vocabulary entries by input-embedding cosine. Stage 2 ranks them by how the model
    responds to them: the velocity probe when the family supports it (`probe`), else the similarity of encoded
    prompts. `exclude` holds words never to return (e.g. every word of the preserve corpus: a concept's geometric
    neighbour "square" must not be erased along with "triangle" when the operator's prompts use it).
    """
    words = _shortlist(pipe, concept, exclude or set(), shortlist)
    if not words:
        return []
    if probe and family.training is not None:
        scores = _probe_scores(pipe, family, concept, words)
    else:
        scores = _encoder_scores(pipe, family, concept, words)
    ranked = scores.argsort(descending=True).tolist()[:k]
    return [words[i] for i in ranked if scores[i] >= min_score]


@dataclass(frozen=True)
class Mined:
    """What the model says about a concept's nearest words: those it draws like the concept (phrasings to erase),
    and those it reads nearby but draws differently (neighbours: what an erasure must not take along)."""

    phrasings: tuple[str, ...]
    neighbours: tuple[str, ...]
    scores: dict[str, float]


# The velocity probe's verdicts (cosine with the concept's own response, centred on everyday words): a phrasing draws
# like the concept, a neighbour clearly does not. Measured on both demo worlds: in-training synonyms score 0.95-1.0
# ("block" for a square 0.95), unrelated words the reading index places near the concept 0.6-0.97 ("limestone" 0.96
# for a triangle: at most `k` phrasings are taken, best first, which keeps most of them out), other shapes below 0.5.
# Neighbours are held still by the erasure, so only clear ones count: at 0.5, "gemstone" and "gems" (which the judge
# sees drawn as diamonds now and then) were held still and left a third of a "diamond" erasure's samples diamonds.
SYNONYM_SCORE = 0.95
NEIGHBOUR_SCORE = 0.2


def _prefix(word: str) -> str:
    """What forms of a word start with: up to 5 letters, never its last letter, never fewer than 3."""
    return word[: max(3, min(5, len(word) - 1))]


def _one_per_stem(words: list[str], concept: str) -> list[str]:
    """The shortest form of each word, in rank order: forms crowd the few phrasings an erasure takes ("boxed",
    "boxes", "box" ahead of "block"). Forms of the concept itself are all kept: each is its own token ("triangles"),
    and without "triangles" and "triangular" a triangle erasure cost the other shapes more (tests/test_ice.py)."""
    kept: list[str] = []
    out: list[str] = []
    own = concept.lower().split()
    for word in sorted(words, key=len):
        if any(is_form(word, c) for c in own):
            out.append(word)
        elif not any(is_form(word, k) for k in kept):
            kept.append(word)
            out.append(word)
    return sorted(out, key=words.index)


def is_form(word: str, base: str) -> bool:
    """Whether `word` is an inflection or short derivation of `base` ("wedges", "triangular"; not "starfish")."""
    return word.startswith(_prefix(base)) and len(word) - len(base) <= 3


def names_any(word: str, phrases: list[str]) -> bool:
    """Whether `word` is one of `phrases` or a form of a one-word phrase ("squares" of "square"; "ice" is not one of
    "ice cream", which draws something else)."""
    return any(word == p or (" " not in p and is_form(word, p)) for p in (p.lower() for p in phrases))


def mine_with_index(
    pipe: Any,
    family: Any,
    index: Any,
    concept: str,
    *,
    k: int = 6,
    near: int = 32,
    neighbours: int = 16,
    exclude: set[str] | None = None,
    memo: PromptMemo | None = None,
) -> Mined:
    """Mines phrasings and neighbours of `concept` through the model's lexicon index (`erasure_core.lexicon`) and
    the velocity probe: the index proposes the `near` words the model's text layer reads nearest the concept and the
    `near` words its text encoder places nearest (the concept's kind), the model's own velocities decide (no word
    list, judge or caller's hint is involved)."""
    blocked = (exclude or set()) | {w.lower() for w in concept.split()}
    means = encode_means(pipe, family, [concept])
    read_near = index.nearest(read_means(pipe, family, means)[0], near, exclude=blocked)
    kind_near = index.similar(semantic_of(means)[0], near, exclude=blocked)
    words = list(dict.fromkeys([*read_near, *kind_near]))
    if not words or family.training is None:
        return Mined((), (), {})
    scores = dict(zip(words, _probe_scores(pipe, family, concept, words, REFERENCE_WORDS, memo).tolist(), strict=True))
    ranked = sorted(words, key=lambda w: -scores[w])
    found = tuple(_one_per_stem([w for w in ranked if scores[w] >= SYNONYM_SCORE], concept))[:k]
    kept = tuple(sorted((w for w in words if scores[w] < NEIGHBOUR_SCORE), key=lambda w: scores[w]))[:neighbours]
    return Mined(found, kept, {w: round(scores[w], 3) for w in ranked})


def _llm_prompt(concept: str, n: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You list alternative phrasings. Answer with a JSON array of strings only."},
        {
            "role": "user",
            "content": f"Give up to {n} short synonyms, paraphrases or closely related phrasings that a user could "
            f"type into an image generator to get '{concept}'.",
        },
    ]


def llm_phrasings(endpoint: LLMEndpoint, concept: str) -> list[str]:
    """Asks an OpenAI-compatible endpoint for phrasings; raises ExpansionError on any failure."""
    body = json.dumps(
        {"model": endpoint.model, "messages": _llm_prompt(concept, endpoint.max_items), "temperature": 0}
    ).encode()
    url = endpoint.url.rstrip("/") + "/chat/completions"
    if not url.startswith(("http://", "https://")):
        raise ExpansionError(f"LLM endpoint must be an http(s) URL, got {endpoint.url!r}")
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (http(s) only)
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:  # noqa: S310 (checked above)
            payload = json.loads(response.read(1_000_000))
        content = payload["choices"][0]["message"]["content"]
        items = json.loads(content[content.index("[") : content.rindex("]") + 1])
    except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError, TypeError) as e:
        raise ExpansionError(f"LLM expansion via {url} failed: {e}") from e
    phrases = [" ".join(str(item).split()) for item in items if isinstance(item, str)]
    return [p for p in phrases if 0 < len(p) <= 200][: endpoint.max_items]


def verify_phrasings(
    pipe: Any,
    family: Any,
    concept: str,
    candidates: list[str],
    min_score: float = 0.7,
    memo: PromptMemo | None = None,
) -> list[str]:
    """The candidates the model itself draws like the concept: velocity-probe score against `REFERENCE_WORDS`.

    Measured on the shapes demo world for "diamond": "rhombus" 0.89 and "lozenge" 0.87 (both draw diamonds there),
    "gem" 0.27, "dog" -0.78. A family without training ops cannot be probed: its candidates are returned as they are.
    """
    if not candidates or family.training is None:
        return list(candidates)
    scores = _probe_scores(pipe, family, concept, candidates, reference=REFERENCE_WORDS, memo=memo)
    return [c for c, score in zip(candidates, scores.tolist(), strict=True) if score >= min_score]


def expansion(
    pipe: Any,
    family: Any,
    concept: str,
    synonyms: tuple[str, ...] = (),
    mine: bool = False,
    mine_k: int = 6,
    llm: LLMEndpoint | None = None,
    exclude: set[str] | None = None,
    verify: bool = True,
    index: Any = None,
    memo: PromptMemo | None = None,
    also: tuple[str, ...] = (),
) -> Mined:
    """All phrasings to erase (the concept, the caller's synonyms, then mined and LLM phrasings, deduplicated) and
    the neighbours mining found, minus any that names what the erasure removes (a phrasing or a concept of `also`,
    or a form of one: mined near "triangle", "squares" draws squares and would be held still by an erasure that
    also removes "square"; with 100 concepts it kept 62% of the squares).

    With a reading index (`erasure_core.lexicon`) mining proposes from the model's reading of a whole lexicon and
    also returns neighbours; without one, from the tokenizer's whole words (`mine_neighbours`). LLM phrasings are
    kept only when the model draws them like the concept (`verify_phrasings`), unless `verify` is off: an LLM names
    what people mean by a word, the model decides what it draws for it. `memo` keeps the probe's velocities per
    prompt (the model's own, across erasures: `erasure_core.methods.common.velocity_memo`).
    """
    phrasings = [concept, *synonyms]
    mined = Mined((), (), {})
    if mine and index is not None:
        mined = mine_with_index(pipe, family, index, concept, k=mine_k, exclude=exclude, memo=memo)
        phrasings += mined.phrasings
    elif mine:
        phrasings += mine_neighbours(pipe, family, concept, k=mine_k, exclude=exclude)
    if llm is not None:
        suggested = llm_phrasings(llm, concept)
        phrasings += verify_phrasings(pipe, family, concept, suggested, memo=memo) if verify else suggested
    seen: dict[str, None] = {}
    for phrase in phrasings:
        seen.setdefault(" ".join(phrase.split()).lower(), None)
    erased = [p for p in (*seen, *also) if p]
    neighbours = tuple(n for n in mined.neighbours if not names_any(n, erased))
    return Mined(tuple(p for p in seen if p), neighbours, mined.scores)
