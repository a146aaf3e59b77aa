"""Open-Sora 2.0 (`OpenSoraPipeline`): layers, targets and prompt encoding.

The port keeps diffusers Flux module names, so the text enters the transformer raw in the same two Linear layers as
in Flux: `context_embedder` (official `txt_in`, per-token T5 states -> hidden) and
`time_text_embed.text_embedder.linear_1` (official `vector_in.in_layer`, pooled CLIP vector -> hidden). LoRA
methods (EraseAnything++ "EraseVideo") target the text-stream query/key projections of the double-stream blocks
(official `double_blocks.{i}.txt_attn.{q,k}_proj`), the same target set as Flux; the training ops they need are in
`open_sora_training.py`.

Prompts are encoded exactly as `OpenSoraPipeline.__call__` feeds them to the transformer by default: with the
" 24 FPS. 4 motion score." suffix that Open-Sora's inference script appends, so an edit computed here acts on the
embeddings the model sees at generation time.
"""

from __future__ import annotations

from typing import Any

import torch

from erasure_core.families.base import ModelFamily, TextSpace
from erasure_core.families.open_sora_training import OpenSoraTrainingOps

MAX_T5_LENGTH = 512
DEFAULT_FPS = 24
DEFAULT_MOTION_SCORE = 4


def default_max_sequence_length(pipe: Any) -> int:
    """The second tokenizer's `model_max_length`, capped at 512 (T5's length in Open-Sora 2.0)."""
    tokenizer = getattr(pipe, "tokenizer_2", None)
    length = getattr(tokenizer, "model_max_length", MAX_T5_LENGTH) or MAX_T5_LENGTH
    return int(min(length, MAX_T5_LENGTH))


def native_size(pipe: Any) -> tuple[int, int]:
    """The model's native (height, width) in pixels (256 x 256 for Open-Sora 2.0's 256px stage)."""
    return pipe.native_size


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str], max_sequence_length: int | None = None) -> dict[str, torch.Tensor]:
    """Encodes prompts as the pipeline does before its transformer (float32 on CPU for the solvers)."""
    from erasure_core.pipelines.open_sora.pipeline_open_sora import decorate_prompt

    decorated = [decorate_prompt(p, fps=DEFAULT_FPS, motion_score=DEFAULT_MOTION_SCORE) for p in prompts]
    tokens, pooled = pipe.encode_prompt(
        decorated,
        device=pipe.transformer.device,
        num_videos_per_prompt=1,
        max_sequence_length=max_sequence_length or default_max_sequence_length(pipe),
    )
    return {"tokens": tokens.float().cpu(), "pooled": pooled.float().cpu()}


OPEN_SORA = ModelFamily(
    name="open-sora",
    text_spaces=(
        TextSpace("tokens", ("context_embedder",)),
        TextSpace("pooled", ("time_text_embed.text_embedder.linear_1",)),
    ),
    lora_targets={
        # EraseAnything++ (EraseVideo): text-stream Q/K of every double-stream block, as for Flux.
        "text_qk": ("transformer_blocks.{i}.attn.add_q_proj", "transformer_blocks.{i}.attn.add_k_proj"),
        "text_qkv": (
            "transformer_blocks.{i}.attn.add_q_proj",
            "transformer_blocks.{i}.attn.add_k_proj",
            "transformer_blocks.{i}.attn.add_v_proj",
        ),
    },
    encode=encode_prompts,
    default_max_sequence_length=default_max_sequence_length,
    native_size=native_size,
    # Trained methods (EraseAnything++ "EraseVideo") on packed video latents, as the Open-Sora sampler runs them.
    training=OpenSoraTrainingOps(max_sequence_length=default_max_sequence_length, native_size=native_size),
)
