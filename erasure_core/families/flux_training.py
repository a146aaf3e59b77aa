"""Flux ops that trained erasure methods need: packed latents, velocities, Euler sampling, attention capture.

Velocities follow `FluxPipeline` exactly: the transformer gets packed 2x2 latents, the timestep as sigma in [0, 1]
(the pipeline divides its 0..1000 timesteps by 1000), zero text ids and (row, col) image ids; x_t moves along
x_{t'} = x_t + (sigma' - sigma) v, with v ~ noise - x0. `size` (square side in pixels) trains below the native size
(real models train at 512); None is the native size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.families.base import MaxSequenceLength, NativeSize


@dataclass
class TextCondition:
    """Encoded prompts: per-token states [B, L, d], pooled [B, d], and the token ids used (for keyword lookup)."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    input_ids: torch.Tensor

    def index(self, idx: torch.Tensor | list[int]) -> TextCondition:
        return TextCondition(self.tokens[idx], self.pooled[idx], self.input_ids[idx])


@dataclass(frozen=True)
class FluxTrainingOps:
    """Stateless helpers over a loaded FluxPipeline; the family passes in how it reads its text length and size."""

    max_sequence_length: MaxSequenceLength
    native_size: NativeSize

    def latent_grid(self, pipe: Any, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, latent height, latent width) of unpacked latents at the given (default native) size."""
        h, w = self.native_size(pipe)
        factor = pipe.vae_scale_factor
        return pipe.transformer.config.in_channels // 4, (height or h) // factor, (width or w) // factor

    def encode_text(self, pipe: Any, prompts: list[str]) -> TextCondition:
        length = self.max_sequence_length(pipe)
        with torch.no_grad():
            tokens, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=pipe.transformer.device, max_sequence_length=length
            )
        ids = pipe.tokenizer_2(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids
        return TextCondition(tokens, pooled, ids)

    def keyword_positions(self, pipe: Any, cond: TextCondition, keyword: str) -> list[list[int]]:
        """Token positions of `keyword` in each prompt (matched by token-id subsequence, as EraseAnything does)."""
        piece = pipe.tokenizer_2(keyword, add_special_tokens=False).input_ids
        out = []
        for row in cond.input_ids.tolist():
            hits = [i for i in range(len(row) - len(piece) + 1) if row[i : i + len(piece)] == piece]
            out.append([i + j for i in hits for j in range(len(piece))])
        return out

    def ids(self, pipe: Any, cond: TextCondition, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = grid
        device, dtype = pipe.transformer.device, pipe.transformer.dtype
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(cond.tokens.shape[1], 3, device=device, dtype=dtype)
        return img_ids, txt_ids

    def velocity(
        self, pipe: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: TextCondition, size: int | None = None
    ) -> torch.Tensor:
        """v(x_t, sigma, text) from the transformer, as FluxPipeline calls it (guidance-distilled models get 3.5)."""
        grid = self.latent_grid(pipe, size, size)
        img_ids, txt_ids = self.ids(pipe, cond, grid)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full((latents.shape[0],), 3.5, device=latents.device)
        return pipe.transformer(
            hidden_states=latents,
            timestep=sigma,
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.tokens,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    def noise(self, pipe: Any, n: int, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
        c, h, w = self.latent_grid(pipe, size, size)
        x = torch.randn(n, c, h, w, generator=generator)
        return pipe._pack_latents(x, n, c, h, w).to(pipe.transformer.device, pipe.transformer.dtype)

    def sigmas(self, pipe: Any, steps: int, size: int | None = None) -> torch.Tensor:
        """The pipeline's own shifted sigma schedule for `steps` steps (ending at 0)."""
        _, h, w = self.latent_grid(pipe, size, size)
        seq_len = (h // 2) * (w // 2)
        cfg = pipe.scheduler.config
        raw = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
        if cfg.get("use_dynamic_shifting", False):
            m = (cfg.get("max_shift", 1.15) - cfg.get("base_shift", 0.5)) / (
                cfg.get("max_image_seq_len", 4096) - cfg.get("base_image_seq_len", 256)
            )
            mu = seq_len * m + cfg.get("base_shift", 0.5) - m * cfg.get("base_image_seq_len", 256)
            shifted = math.exp(mu) / (math.exp(mu) + (1 / raw - 1))
        else:
            s = cfg.get("shift", 1.0)
            shifted = s * raw / (1 + (s - 1) * raw)
        return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()

    @torch.no_grad()
    def sample_partial(
        self,
        pipe: Any,
        cond: TextCondition,
        steps: int,
        stop: int,
        generator: torch.Generator,
        size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs `stop` of `steps` Euler steps from noise; returns (x_t, sigma_t) with sigma_t per sample."""
        sig = self.sigmas(pipe, steps, size)
        x = self.noise(pipe, cond.tokens.shape[0], generator, size)
        for i in range(stop):
            s = sig[i].expand(x.shape[0]).to(x)
            x = x + (sig[i + 1] - sig[i]) * self.velocity(pipe, x, s, cond, size)
        return x, sig[stop].expand(x.shape[0]).to(x)

    @contextmanager
    def capture_attention(self, pipe: Any, block: int = -1) -> Iterator[dict[str, torch.Tensor]]:
        """Records the joint attention probabilities [B, heads, S, S] of one double-stream block (default: last).

        The text tokens come first in Flux's joint sequence, so columns [:L] are attention paid to text tokens.
        """
        attn = pipe.transformer.transformer_blocks[block].attn
        record: dict[str, torch.Tensor] = {}
        original = attn.processor
        attn.set_processor(_RecordingProcessor(record))
        try:
            yield record
        finally:
            attn.set_processor(original)


class _RecordingProcessor:
    """The Flux joint-attention math written out, keeping the probability matrix (for attention losses)."""

    def __init__(self, record: dict[str, torch.Tensor]) -> None:
        self.record = record

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

        q = attn.norm_q(heads(attn.to_q(hidden_states)))
        k = attn.norm_k(heads(attn.to_k(hidden_states)))
        v = heads(attn.to_v(hidden_states))
        assert encoder_hidden_states is not None, "the recording processor is for double-stream blocks"
        eq = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        ek = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        ev = heads(attn.add_v_proj(encoder_hidden_states))
        q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D]
        probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        self.record["probs"] = probs
        out = (probs @ v).transpose(1, 2).flatten(2, 3).to(q.dtype)
        n_txt = encoder_hidden_states.shape[1]
        enc, img = out[:, :n_txt], out[:, n_txt:]
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(enc.contiguous())
