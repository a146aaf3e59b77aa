"""Flux (FLUX.1-dev / -schnell and the Flux-format demo world): layers, targets and prompt encoding.

Text reaches the Flux transformer raw in exactly two Linear layers: `context_embedder` (per-token T5 states ->
hidden) and `time_text_embed.text_embedder.linear_1` (pooled CLIP vector -> hidden). Everything after them sees
evolved states, so closed-form edits act there. LoRA methods (EraseAnything) target the text-stream query/key
projections of the double-stream blocks.
"""

from __future__ import annotations

from typing import Any

import torch

from erasure_core.families.base import ModelFamily, TextSpace
from erasure_core.families.flux_training import FluxTrainingOps

MAX_T5_LENGTH = 512


def default_max_sequence_length(pipe: Any) -> int:
    """The second tokenizer's `model_max_length`, capped at 512 (T5's limit in Flux)."""
    tokenizer = getattr(pipe, "tokenizer_2", None)
    length = getattr(tokenizer, "model_max_length", MAX_T5_LENGTH) or MAX_T5_LENGTH
    return int(min(length, MAX_T5_LENGTH))


def native_size(pipe: Any) -> tuple[int, int]:
    """The model's native (height, width): the VAE's sample size (1024 for FLUX.1, 32 for the demo world)."""
    size = int(getattr(pipe.vae.config, "sample_size", 1024) or 1024)
    return size, size


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str], max_sequence_length: int | None = None) -> dict[str, torch.Tensor]:
    """Encodes prompts exactly as the pipeline does before its transformer (float32 on CPU for the solvers)."""
    tokens, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        device=pipe.transformer.device,
        num_images_per_prompt=1,
        max_sequence_length=max_sequence_length or default_max_sequence_length(pipe),
    )
    return {"tokens": tokens.float().cpu(), "pooled": pooled.float().cpu()}


@torch.no_grad()
def encode_tokens(pipe: Any, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """The per-token (T5) states alone, as the pipeline computes them, float32 on CPU."""
    states = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=max_sequence_length)
    return states.float().cpu()


FLUX = ModelFamily(
    name="flux",
    text_spaces=(
        TextSpace("tokens", ("context_embedder",)),
        TextSpace("pooled", ("time_text_embed.text_embedder.linear_1",)),
    ),
    lora_targets={
        # EraseAnything / EraseAnything++: text-stream Q/K of every double-stream block.
        "text_qk": ("transformer_blocks.{i}.attn.add_q_proj", "transformer_blocks.{i}.attn.add_k_proj"),
        "text_qkv": (
            "transformer_blocks.{i}.attn.add_q_proj",
            "transformer_blocks.{i}.attn.add_k_proj",
            "transformer_blocks.{i}.attn.add_v_proj",
        ),
    },
    encode=encode_prompts,
    encode_tokens=encode_tokens,
    default_max_sequence_length=default_max_sequence_length,
    native_size=native_size,
    training=FluxTrainingOps(max_sequence_length=default_max_sequence_length, native_size=native_size),
)
