"""Open-Sora ops that trained erasure methods need: packed video latents, velocities, the sampler's schedule and
guidance, attention capture, and which latent frame each packed token belongs to.

Everything follows `OpenSoraPipeline` (erasure_core/pipelines/open_sora/pipeline_open_sora.py) for text-to-video:

* latents are [B, C, T, h, w] noise from a CPU generator, packed 2x2 (`pack_latents`) into [B, T*(h/p)*(w/p), C*p*p],
  frame-major, with integer (t, h, w) token ids and zero text ids;
* the transformer gets the timestep as flow time in [0, 1] (the pipeline passes scheduler timesteps / 1000) and the
  zero image condition (mask + reference latents) that text-to-video feeds every pass;
* the schedule is the scheduler's own: sigmas linspace(1, 0, steps + 1)[:-1] under Open-Sora's static shift
  alpha = lin(tokens per frame) * sqrt(latent frames) (`shift_alpha`), computed on a private copy of the scheduler
  (the pipeline's own instance is shared with generation and must not be touched);
* sampling uses the pipeline's classifier-free guidance: the pipeline's three passes (c, u, u2) reduce to two for
  text-to-video (the image condition is zero, so u = u2): v = u + g (c - u) with g = 7.5 (the pipeline's default,
  which the service uses unless a request sets `guidance_scale`), oscillating to 1 on odd steps from step 10, and the
  negative prompt "" encoded undecorated, as `OpenSoraPipeline.__call__` does.

Prompts are decorated with the " 24 FPS. 4 motion score." suffix the family encodes with, so a LoRA trained here acts
on the embeddings the model sees at generation time. `size` (square side in pixels) trains below the native size;
None is the native size. Clips always have the model's native number of latent frames.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.families.attention import OPEN_SORA_ROPE, capture_attention
from erasure_core.families.base import MaxSequenceLength, NativeSize
from erasure_core.families.flux_training import TextCondition

# The pipeline module (diffusers' pipeline machinery) is imported on first use, as families/open_sora.py does: importing
# the family table must stay light.
GUIDANCE_SCALE = 7.5  # OpenSoraPipeline.__call__'s default text guidance
FPS, MOTION_SCORE = 24, 4  # the suffix the family encodes prompts with (families/open_sora.py)


@functools.lru_cache(maxsize=64)
def _schedule(scheduler_config: tuple[tuple[str, Any], ...], steps: int, alpha: float) -> torch.Tensor:
    """The sampler's sigmas (steps + 1 values, ending at 0), from a private scheduler set up as the pipeline sets its
    own (`OpenSoraPipeline._set_timesteps`)."""
    import numpy as np
    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    scheduler.set_shift(alpha)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    return scheduler.sigmas.detach().clone().float()


@dataclass(frozen=True)
class OpenSoraTrainingOps:
    """Stateless helpers over a loaded OpenSoraPipeline (the family passes in its text length and native size)."""

    max_sequence_length: MaxSequenceLength
    native_size: NativeSize

    # ---- shapes -----------------------------------------------------------------------------------------------
    def latent_grid(self, pipe: Any, size: int | None = None) -> tuple[int, int, int, int]:
        """(channels, latent frames, latent height, latent width) of unpacked latents at a square `size` (pixels;
        None: native) and the model's native length."""
        h, w = self.native_size(pipe)
        ratio = int(pipe.vae_scale_factor_spatial)
        channels = int(pipe.transformer.config.in_channels) // pipe.patch_size**2
        frames = int(pipe.transformer.config.sample_frames)
        return channels, frames, (size or h) // ratio, (size or w) // ratio

    def token_frames(self, pipe: Any, size: int | None = None) -> torch.Tensor:
        """[S]: the latent frame of each packed token (packing is frame-major). Latent frame 0 is the causal VAE's
        encoding of the first video frame alone; frame k > 0 covers video frames (k-1)*r + 1 .. k*r."""
        _, frames, h, w = self.latent_grid(pipe, size)
        per_frame = (h // pipe.patch_size) * (w // pipe.patch_size)
        return torch.arange(frames).repeat_interleave(per_frame)

    # ---- text -------------------------------------------------------------------------------------------------
    def encode_text(self, pipe: Any, prompts: list[str], decorate: bool = True) -> TextCondition:
        """Per-token and pooled states of the prompts as the pipeline feeds them (with the family's suffix unless
        `decorate` is False, as for the negative prompt), plus the token ids of the per-token encoder."""
        from erasure_core.pipelines.open_sora.pipeline_open_sora import decorate_prompt

        texts = [decorate_prompt(p, fps=FPS, motion_score=MOTION_SCORE) for p in prompts] if decorate else prompts
        length = self.max_sequence_length(pipe)
        with torch.no_grad():
            tokens, pooled = pipe.encode_prompt(texts, device=pipe.transformer.device, max_sequence_length=length)
        ids = pipe.tokenizer_2(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids
        return TextCondition(tokens, pooled, ids)

    def keyword_positions(self, pipe: Any, cond: TextCondition, keyword: str) -> list[list[int]]:
        """Token positions of `keyword` in each prompt (token-id subsequence match, as EraseAnything does)."""
        piece = pipe.tokenizer_2(keyword, add_special_tokens=False).input_ids
        out = []
        for row in cond.input_ids.tolist():
            hits = [i for i in range(len(row) - len(piece) + 1) if row[i : i + len(piece)] == piece]
            out.append([i + j for i in hits for j in range(len(piece))])
        return out

    # ---- the transformer ----------------------------------------------------------------------------------------
    def velocity(
        self, pipe: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: TextCondition, size: int | None = None
    ) -> torch.Tensor:
        """v(x_t, sigma, text) for packed latents [B, S, C*p*p], called as `OpenSoraPipeline._denoise` calls it."""
        from erasure_core.pipelines.open_sora.pipeline_open_sora import video_ids

        _, frames, h, w = self.latent_grid(pipe, size)
        p, device, dtype = pipe.patch_size, pipe.transformer.device, pipe.transformer.dtype
        img_ids = video_ids(frames, h // p, w // p, device, dtype)
        txt_ids = torch.zeros(cond.tokens.shape[1], 3, device=device, dtype=dtype)
        zero_cond = torch.zeros(latents.shape[0], latents.shape[1], latents.shape[2] + p**2, device=device, dtype=dtype)
        return pipe.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=cond.tokens.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            timestep=sigma.to(dtype),
            img_ids=img_ids,
            txt_ids=txt_ids,
            cond_hidden_states=zero_cond,
            return_dict=False,
        )[0]

    def noise(self, pipe: Any, n: int, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
        """Packed float32 noise; the unpacked draw is the pipeline's (`randn_tensor` of one CPU generator)."""
        from erasure_core.pipelines.open_sora.pipeline_open_sora import pack_latents

        c, frames, h, w = self.latent_grid(pipe, size)
        x = torch.randn(n, c, frames, h, w, generator=generator)
        return pack_latents(x, pipe.patch_size).to(pipe.transformer.device)

    def sigmas(self, pipe: Any, steps: int, size: int | None = None) -> torch.Tensor:
        """The pipeline's shifted sigma schedule for `steps` steps (steps + 1 values, ending at 0)."""
        from erasure_core.pipelines.open_sora.pipeline_open_sora import shift_alpha

        _, frames, h, w = self.latent_grid(pipe, size)
        alpha = shift_alpha((h // pipe.patch_size) * (w // pipe.patch_size), frames)
        config = tuple(sorted((k, v) for k, v in pipe.scheduler.config.items() if not isinstance(v, list | dict)))
        return _schedule(config, steps, alpha).clone()

    def negative(self, pipe: Any, n: int) -> TextCondition:
        """The sampler's negative prompt "" (undecorated, as `OpenSoraPipeline` encodes it), n rows."""
        return self.encode_text(pipe, [""] * n, decorate=False)

    def guided_velocity(
        self,
        pipe: Any,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: TextCondition,
        negative: TextCondition,
        step: int,
        size: int | None = None,
    ) -> torch.Tensor:
        """The sampler's guided velocity u + g (c - u) at Euler step `step` (g oscillates as the pipeline's does)."""
        from erasure_core.pipelines.open_sora.pipeline_open_sora import oscillated

        both = TextCondition(
            torch.cat([cond.tokens, negative.tokens]),
            torch.cat([cond.pooled, negative.pooled]),
            torch.cat([cond.input_ids, negative.input_ids]),
        )
        c, u = self.velocity(pipe, x.repeat(2, 1, 1), sigma.repeat(2), both, size).float().chunk(2)
        return u + oscillated(GUIDANCE_SCALE, True, step) * (c - u)

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
        """Runs `stop` of `steps` guided Euler steps from noise; returns (x_t, sigma_t) with sigma_t per sample."""
        sig = self.sigmas(pipe, steps, size)
        x = self.noise(pipe, cond.tokens.shape[0], generator, size)
        negative = self.negative(pipe, x.shape[0])  # encoded once per sample, not per Euler step
        for i in range(stop):
            s = sig[i].expand(x.shape[0]).to(x)
            x = x + (sig[i + 1] - sig[i]) * self.guided_velocity(pipe, x, s, cond, negative, i, size)
        return x, sig[stop].expand(x.shape[0]).to(x)

    def capture_attention(self, pipe: Any, block: int = -1) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Records one double-stream block's joint attention probabilities (`families.attention`)."""
        return capture_attention(pipe, block, OPEN_SORA_ROPE)
