"""A white-box attack on an erased model: a soft prompt that brings the concept back, projected to real words.

In the spirit of UnlearnDiffAtk (Zhang et al., 2024) and Ring-A-Bell (Tsai et al., 2024), on the erased model itself:
`tokens` soft token embeddings, in the text encoder's input-embedding space, are put in front of target prompts
("<s1> <s2> <s3> a red triangle") and optimised so that the erased model's velocity on noised latents of base-model
concept images matches the base model's concept velocity there:

    min_S  E_{x0 ~ base(c), sigma, eps} || v_erased(x_sigma, sigma, enc([S; c])) - v_base(x_sigma, sigma, enc(c)) ||^2

with x_sigma = (1 - sigma) x0 + sigma eps (the rectified-flow path `FluxPipeline` samples). Gradients flow through
the transformer (with the erasure's hooks active) and the text encoder into S; every weight stays frozen. Each soft
token is then projected onto its `candidates` nearest vocabulary words (cosine, whole words that round-trip through
the tokenizer, the concept's own words excluded); the discrete prefixes are ranked by the same loss and the best
`evaluated` ones are generated and judged like any other prompt. Both results are reported: the soft prompt's (what
an attacker with embedding access gets) and the projected prompts' (what anyone can type).

When both text-encoder slots hold the same encoder (the demo worlds), the soft tokens feed both (per-token states
and pooled vector); otherwise they feed the per-token encoder (`text_encoder_2`, T5 on FLUX.1) and the pooled vector
comes from the prompt without them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from erasure_core.families.flux_training import TextCondition

logger = logging.getLogger(__name__)

MAX_ATTACK_STEPS = 400


@dataclass(frozen=True)
class AttackConfig:
    steps: int = 60
    tokens: int = 3
    candidates: int = 3  # nearest vocabulary words kept per soft token
    evaluated: int = 3  # discrete prompts generated and judged
    carriers: int = 3  # target prompts the soft prompt is optimised over
    noise_draws: int = 4  # (sigma, noise) draws per base image and step
    lr: float = 0.1
    seed: int = 0

    def budget(self) -> dict[str, int | float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Session(Protocol):
    """Where the attack and the report run the model: `base()` / `erased()` hold the pipeline (the caller's lock)
    with no erasure / the erasure under report active, and yield the engine."""

    def base(self) -> AbstractContextManager[Any]: ...

    def erased(self) -> AbstractContextManager[Any]: ...


@dataclass
class Candidate:
    prompt_prefix: str
    loss: float
    rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prefix": self.prompt_prefix, "loss": round(self.loss, 6)}
        if self.rate is not None:
            out["rate"] = round(self.rate, 3)
        return out


@dataclass
class AttackResult:
    soft_embeddings: torch.Tensor  # [tokens, d]
    losses: list[float]
    candidates: list[Candidate]
    seconds: float
    config: AttackConfig
    shared_slots: bool
    extra: dict[str, Any] = field(default_factory=dict)


# -- text encoding with soft tokens -------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One text encoder as the pipeline runs it: its tokenizer, model and text length."""

    tokenizer: Any
    model: Any
    length: int

    def ids(self, prompts: Sequence[str], k: int) -> tuple[torch.Tensor, int]:
        """Token ids with `k` placeholder positions right after the start token; returns (ids, first position)."""
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.length, truncation=True, return_tensors="pt"
        ).input_ids
        cls = getattr(self.tokenizer, "cls_token_id", None)
        start = 1 if cls is not None and int(ids[0, 0]) == cls else 0
        filler = torch.full((ids.shape[0], k), int(self.tokenizer.pad_token_id or 0), dtype=ids.dtype)
        return torch.cat([ids[:, :start], filler, ids[:, start : self.length - k]], 1), start

    def embed(self, prompts: Sequence[str], soft: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, L, d] with the soft tokens in their positions (differentiable in `soft`)."""
        k = soft.shape[0]
        ids, start = self.ids(prompts, k)
        table = self.model.get_input_embeddings()
        embeds = table(ids.to(table.weight.device))
        rows = soft.to(embeds.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        return torch.cat([embeds[:, :start], rows, embeds[:, start + k :]], 1)


def _slots(pipe: Any, max_sequence_length: int) -> tuple[_Slot, _Slot | None]:
    """(per-token slot, pooled slot when it shares the per-token encoder's embedding space, else None)."""
    tokens = _Slot(pipe.tokenizer_2, pipe.text_encoder_2, max_sequence_length)
    a, b = pipe.text_encoder.get_input_embeddings().weight, pipe.text_encoder_2.get_input_embeddings().weight
    shared = (
        type(pipe.text_encoder) is type(pipe.text_encoder_2)
        and a.shape == b.shape
        and bool(torch.equal(a, b))
        and hasattr(pipe.text_encoder, "pooler")
    )
    pooled = _Slot(pipe.tokenizer, pipe.text_encoder, int(pipe.tokenizer_max_length)) if shared else None
    return tokens, pooled


def encode_soft(pipe: Any, prompts: Sequence[str], soft: torch.Tensor, max_sequence_length: int) -> TextCondition:
    """The text condition of `[soft; prompt]` as `FluxPipeline.encode_prompt` would compute it for real tokens."""
    token_slot, pooled_slot = _slots(pipe, max_sequence_length)
    dtype = pipe.transformer.dtype
    states = token_slot.model(inputs_embeds=token_slot.embed(prompts, soft))[0].to(dtype)
    if pooled_slot is not None:
        pooled = pooled_slot.model(inputs_embeds=pooled_slot.embed(prompts, soft)).pooler_output.to(dtype)
    else:
        with torch.no_grad():
            _, pooled, _ = pipe.encode_prompt(
                prompt=list(prompts),
                prompt_2=None,
                device=pipe.transformer.device,
                max_sequence_length=max_sequence_length,
            )
    ids, _ = token_slot.ids(prompts, soft.shape[0])
    return TextCondition(states, pooled, ids)


# -- the vocabulary the soft tokens are projected onto ------------------------------------------------------------

_VOCAB_CACHE: dict[tuple[int, int], tuple[torch.Tensor, list[str]]] = {}


def word_vocabulary(tokenizer: Any) -> tuple[torch.Tensor, list[str]]:
    """Token ids that are whole alphabetic words and tokenize back to themselves alone, and their words."""
    key = (id(tokenizer), len(tokenizer))
    if key in _VOCAB_CACHE:
        return _VOCAB_CACHE[key]
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    words = [tokenizer.decode([i]).strip() for i in ids]
    keep = [(i, w) for i, w in zip(ids, words, strict=True) if w.isascii() and w.isalpha() and len(w) >= 2]
    encoded = tokenizer([w for _, w in keep], add_special_tokens=False).input_ids
    final = [(i, w) for (i, w), enc in zip(keep, encoded, strict=True) if list(enc) == [i]]
    result = (torch.tensor([i for i, _ in final]), [w for _, w in final])
    _VOCAB_CACHE[key] = result
    return result


def _allowed(tokenizer: Any, excluded_words: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    ids, words = word_vocabulary(tokenizer)
    banned = {w.lower() for phrase in excluded_words for w in phrase.split()}
    keep = [j for j, w in enumerate(words) if w.lower() not in banned]
    return ids[keep], [words[j] for j in keep]


# -- the attack ---------------------------------------------------------------------------------------------------


@contextmanager
def _frozen(*modules: Any) -> Iterator[None]:
    """Every parameter frozen for the block (gradients flow to the soft tokens only), then restored."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@dataclass
class _Problem:
    """The fixed part of the objective: carriers, noised base latents, sigmas, and the base velocity targets."""

    carriers: list[str]
    x_t: torch.Tensor
    sigma: torch.Tensor
    target: torch.Tensor
    owner: torch.Tensor  # index of each row's carrier

    def loss(self, pipe: Any, ops: Any, soft: torch.Tensor, length: int) -> torch.Tensor:
        cond = encode_soft(pipe, self.carriers, soft, length).index(self.owner)
        v = ops.velocity(pipe, self.x_t, self.sigma, cond)
        return torch.nn.functional.mse_loss(v.float(), self.target.float())


@torch.no_grad()
def _base_latents(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], steps: int, length: int, size: tuple[int, int]
) -> torch.Tensor:
    out = pipe(
        prompt=list(prompts),
        height=size[0],
        width=size[1],
        num_inference_steps=steps,
        max_sequence_length=length,
        generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
        output_type="latent",
    )
    return out.images.float()


def _problem(session: Session, carriers: list[str], config: AttackConfig, steps: int, length: int) -> _Problem:
    gen = torch.Generator("cpu").manual_seed(config.seed)
    with session.base() as engine:
        pipe, ops = engine.pipe, engine.family.training
        seeds = [config.seed + 7919 * (i + 1) for i in range(len(carriers))]
        x0 = _base_latents(pipe, carriers, seeds, steps, length, engine.native_size)
        sigmas = ops.sigmas(pipe, steps)[:-1]
        rows = torch.arange(len(carriers)).repeat_interleave(config.noise_draws)
        sigma = sigmas[torch.randint(len(sigmas), (len(rows),), generator=gen)].to(x0)
        eps = torch.randn(x0[rows].shape, generator=gen).to(x0)
        x_t = (1 - sigma.view(-1, 1, 1)) * x0[rows] + sigma.view(-1, 1, 1) * eps
        with torch.no_grad():
            cond = ops.encode_text(pipe, carriers).index(rows)
            target = ops.velocity(pipe, x_t, sigma, cond)
    dtype = pipe.transformer.dtype
    return _Problem(carriers, x_t.to(dtype), sigma.to(dtype), target, rows)


def run_attack(
    session: Session,
    carriers: list[str],
    excluded_words: Sequence[str],
    config: AttackConfig,
    steps: int,
    length: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> AttackResult:
    """Optimises the soft prompt against the erased model and ranks its projections (generation is the caller's)."""
    started = time.perf_counter()
    problem = _problem(session, carriers, config, steps, length)
    with session.erased() as engine:
        pipe = engine.pipe
        vocab_ids, _ = _allowed(pipe.tokenizer_2, excluded_words)
        table = pipe.text_encoder_2.get_input_embeddings().weight.detach().float()
        gen = torch.Generator("cpu").manual_seed(config.seed)
        init = vocab_ids[torch.randint(len(vocab_ids), (config.tokens,), generator=gen)]
        shared = _slots(pipe, length)[1] is not None
    soft = table[init].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([soft], lr=config.lr)
    losses: list[float] = []
    tried: dict[tuple[int, ...], float] = {}
    for step in range(config.steps):
        # Projected gradient (PEZ, Wen et al. 2023): the loss is taken at the nearest words and its gradient applied
        # to the continuous tokens, so what is optimised is what can be typed.
        with torch.no_grad():
            nearest = _nearest(soft, table[vocab_ids], 1)[:, 0]
        hard = table[vocab_ids[nearest]].clone().requires_grad_(True)
        with session.erased() as engine:
            with _frozen(engine.pipe.transformer, engine.pipe.text_encoder, engine.pipe.text_encoder_2):
                loss = problem.loss(engine.pipe, engine.family.training, hard, length)
                optimiser.zero_grad()
                loss.backward()
        soft.grad = hard.grad
        optimiser.step()
        losses.append(float(loss.detach()))
        tried[tuple(nearest.tolist())] = losses[-1]
        if progress is not None:
            progress(step + 1, config.steps, losses[-1])
    candidates = _project(session, problem, soft.detach(), tried, excluded_words, config, length)
    seconds = time.perf_counter() - started
    logger.info("attack: %d steps, loss %.4f -> %.4f, %.1f s", config.steps, losses[0], losses[-1], seconds)
    return AttackResult(soft.detach(), losses, candidates, seconds, config, shared)


def _nearest(soft: torch.Tensor, table: torch.Tensor, k: int) -> torch.Tensor:
    """Indices into `table` of the `k` rows nearest (cosine) each soft token: [tokens, k]."""
    sims = torch.nn.functional.normalize(soft.detach().float(), dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    return sims.topk(min(k, table.shape[0]), dim=-1).indices


@torch.no_grad()
def _project(
    session: Session,
    problem: _Problem,
    soft: torch.Tensor,
    tried: dict[tuple[int, ...], float],
    excluded: Sequence[str],
    config: AttackConfig,
    length: int,
) -> list[Candidate]:
    """The best projections met during the run, the final tokens' nearest words and their one-word variants,
    ranked by the attack loss, best first."""
    with session.erased() as engine:
        pipe = engine.pipe
        vocab_ids, words = _allowed(pipe.tokenizer_2, excluded)
        table = pipe.text_encoder_2.get_input_embeddings().weight.detach().float()[vocab_ids]
        nearest = _nearest(soft, table, config.candidates)  # [tokens, candidates]
        choices = [list(c) for c in sorted(tried, key=tried.__getitem__)[: config.candidates]]
        choices.append(nearest[:, 0].tolist())
        for position in range(config.tokens):
            for rank in range(1, nearest.shape[1]):
                variant = nearest[:, 0].tolist()
                variant[position] = int(nearest[position, rank])
                choices.append(variant)
        scored = []
        for choice in choices:
            loss = problem.loss(pipe, engine.family.training, table[choice].to(soft.dtype), length)
            scored.append(Candidate(" ".join(words[j] for j in choice), float(loss)))
    unique = {c.prompt_prefix: c for c in sorted(scored, key=lambda c: c.loss)}
    return list(unique.values())
