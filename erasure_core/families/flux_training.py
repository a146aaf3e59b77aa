"""Flux ops that trained erasure methods need: packed latents, velocities, Euler sampling, attention capture.

Velocities follow `FluxPipeline` exactly: the transformer gets packed 2x2 latents, the timestep as sigma in [0, 1]
(the pipeline divides its 0..1000 timesteps by 1000), zero text ids and (row, col) image ids; x_t moves along
x_{t'} = x_t + (sigma' - sigma) v, with v ~ noise - x0. `size` (square side in pixels) trains below the native size
(real models train at 512); None is the native size.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.families.attention import FLUX_ROPE, capture_attention
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

    def capture_attention(self, pipe: Any, block: int = -1) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Records one double-stream block's joint attention probabilities (`families.attention`)."""
        return capture_attention(pipe, block, FLUX_ROPE)
