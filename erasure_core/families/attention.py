"""Recording one double-stream block's joint attention probabilities (EraseAnything's attention losses, the
Bi-Erasing masks), for the MMDiT families: Flux and Open-Sora 2.0 lay the block out alike (text tokens first in the
joint sequence, per-head RMS norms on Q and K, `to_out` / `to_add_out`) and differ only in their RoPE layout."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# `apply_rotary_emb(..., use_real_unbind_dim=)`: Flux interleaves the rotated pairs (-1), Open-Sora rotates halves (-2).
FLUX_ROPE = -1
OPEN_SORA_ROPE = -2


@contextmanager
def capture_attention(
    pipe: Any, block: int = -1, rope_unbind_dim: int = FLUX_ROPE
) -> Iterator[dict[str, torch.Tensor]]:
    """Records the joint attention probabilities [B, heads, S, S] of one double-stream block (default: last) while
    the context is open; the text tokens come first in the joint sequence, so columns [:L] are attention paid to
    text. The block's own processor is put back on exit."""
    attn = pipe.transformer.transformer_blocks[block].attn
    record: dict[str, torch.Tensor] = {}
    original = attn.processor
    attn.set_processor(RecordingProcessor(record, rope_unbind_dim))
    try:
        yield record
    finally:
        attn.set_processor(original)


class RecordingProcessor:
    """The joint-attention math of the MMDiT double-stream block written out, keeping the probability matrix (the
    fused kernels never form it)."""

    def __init__(self, record: dict[str, torch.Tensor], rope_unbind_dim: int = FLUX_ROPE) -> None:
        self.record = record
        self.rope_unbind_dim = rope_unbind_dim

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (-1, attn.head_dim))

        assert encoder_hidden_states is not None, "the recording processor is for double-stream blocks"
        q = attn.norm_q(heads(attn.to_q(hidden_states)))
        k = attn.norm_k(heads(attn.to_k(hidden_states)))
        v = heads(attn.to_v(hidden_states))
        eq = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        ek = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        ev = heads(attn.add_v_proj(encoder_hidden_states))
        q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            rope = {"use_real_unbind_dim": self.rope_unbind_dim, "sequence_dim": 1}
            q = apply_rotary_emb(q, image_rotary_emb, **rope)
            k = apply_rotary_emb(k, image_rotary_emb, **rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D]
        probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        self.record["probs"] = probs
        out = (probs @ v).transpose(1, 2).flatten(2, 3).to(q.dtype)
        n_txt = encoder_hidden_states.shape[1]
        enc, img = out[:, :n_txt], out[:, n_txt:]
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(enc.contiguous())
