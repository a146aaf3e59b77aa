"""Training of the demo worlds' parts: the tiny VAE, the judge and the tiny Flux transformer.

Library code for `scripts/train_demo_world.py`. Each function is deterministic for a seed on a given machine and
sized to finish on two CPU cores (about 30 minutes in all). The transformer is trained with the rectified-flow
objective that `FluxPipeline` samples with: x_t = (1 - sigma) x0 + sigma * noise, target velocity = noise - x0, the
timestep fed to the model as sigma (the pipeline passes t / 1000), latents packed 2x2 into tokens.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

from erasure_core.worlds.flux_world import TRANSFORMER_CONFIG, VAE_CONFIG
from erasure_core.worlds.judge import NONE_CLASS, ShapeJudge
from erasure_core.worlds.shapes import all_captions, sample_batch, sample_distractors
from erasure_core.worlds.text import encode

logger = logging.getLogger(__name__)

# A data set's sampler, `sample(n, seed)`: a batch with `.images` [n, 3, H, W] in [0, 1] and `.captions` (n strings),
# deterministic per (n, seed). Defaults to the shapes world's `sample_batch`; the fills world passes its own.
Sampler = Callable[[int, int], Any]


@dataclass
class TransformerTrainConfig:
    """Hyperparameters of the transformer run (the defaults reached >= 90% judged shape accuracy)."""

    steps: int = 4200
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    weight_decay: float = 0.01
    dataset_size: int = 24000
    seed: int = 0


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 5% (shared by the demo worlds' training)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * 0.95 + 0.05


def train_vae(steps: int = 1000, batch_size: int = 32, seed: int = 0, sample: Sampler | None = None) -> AutoencoderKL:
    """Trains the tiny VAE (L1 + MSE reconstruction, a small KL term) and sets its shift/scaling factors.

    `sample` draws the training images (default: the shapes world's `sample_batch`).
    """
    sample = sample or sample_batch
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * cosine_lr(step, steps, 50)
        x = sample(batch_size, 10_000_000 + step).images * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval()
    with torch.no_grad():
        x = sample(1024, 12345).images * 2 - 1
        latents = vae.encode(x).latent_dist.mode()
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1.0 / latents.std()))
    return vae


def _augment_like_samples(images: torch.Tensor, g: torch.Generator, vae: AutoencoderKL | None) -> torch.Tensor:
    """Makes clean renders look like generated samples: VAE round trip, blur, noise, brightness jitter."""
    out = images
    if vae is not None:
        with torch.no_grad():
            half = len(out) // 2
            recon = vae.decode(vae.encode(out[:half] * 2 - 1).latent_dist.mode()).sample
            out = torch.cat([(recon.clamp(-1, 1) + 1) / 2, out[half:]])
    blur = torch.rand(len(out), 1, 1, 1, generator=g) < 0.3
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(blur, blurred, out)
    out = out * (0.8 + 0.4 * torch.rand(len(out), 1, 1, 1, generator=g))
    out = out + 0.04 * torch.randn(out.shape, generator=g)
    return out.clamp(0, 1)


def train_judge(
    steps: int = 1200, batch_size: int = 128, seed: int = 0, vae: AutoencoderKL | None = None
) -> ShapeJudge:
    """Trains the judge on renders (shape and colour heads) and distractors (the "none" shape class)."""
    torch.manual_seed(seed)
    judge = ShapeJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed + 1)
    judge.train()
    n_none = batch_size // 8
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * cosine_lr(step, steps, 50)
        batch = sample_batch(batch_size - n_none, seed=20_000_000 + step)
        images = torch.cat([batch.images, sample_distractors(n_none, seed=30_000_000 + step)])
        images = _augment_like_samples(images, g, vae)
        shapes = torch.cat([batch.shapes, torch.full((n_none,), NONE_CLASS)])
        shape_logits, color_logits = judge(images)
        loss = F.cross_entropy(shape_logits, shapes) + F.cross_entropy(color_logits[:-n_none], batch.colors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("judge step %d/%d loss %.4f", step, steps, loss.item())
    return judge.eval()


def _packed_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Encodes images [N, 3, H, W] in [0, 1] to normalised, 2x2-packed Flux latents [N, tokens, 4 * C]."""
    with torch.no_grad():
        latents = vae.encode(images * 2 - 1).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    n, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, n, c, h, w)


def sample_sigmas(n: int, g: torch.Generator) -> torch.Tensor:
    """Half uniform, half logit-normal noise levels in (0, 1)."""
    uniform = torch.rand(n, generator=g)
    logit_normal = torch.sigmoid(torch.randn(n, generator=g))
    return torch.where(torch.arange(n) % 2 == 0, uniform, logit_normal).clamp(1e-4, 1 - 1e-4)


def build_training_set(
    vae: AutoencoderKL,
    size: int,
    seed: int,
    sample: Sampler | None = None,
    captions_of: Callable[[], list[str]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders `size` samples and returns (packed latents, token states, pooled states) aligned by row.

    `sample` draws the samples and `captions_of()` lists every caption they can carry (defaults: the shapes world).
    """
    sample = sample or sample_batch
    captions = (captions_of or all_captions)()
    index = {c: i for i, c in enumerate(captions)}
    tokens, pooled = encode(captions)
    latents: list[torch.Tensor] = []
    rows: list[int] = []
    for start in range(0, size, 1000):
        batch = sample(min(1000, size - start), seed * 1_000_003 + start)
        latents.append(_packed_latents(vae, batch.images))
        rows.extend(index[c] for c in batch.captions)
    row_index = torch.tensor(rows)
    return torch.cat(latents), tokens[row_index], pooled[row_index]


def train_flux_transformer(
    vae: AutoencoderKL,
    config: TransformerTrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    sample: Sampler | None = None,
    captions_of: Callable[[], list[str]] | None = None,
) -> FluxTransformer2DModel:
    """Trains the tiny Flux transformer with the rectified-flow objective and returns its EMA weights.

    `sample` and `captions_of` choose the data set as in `build_training_set` (default: the shapes world).
    """
    config = config or TransformerTrainConfig()
    torch.manual_seed(config.seed)
    model = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    latents, tokens, pooled = build_training_set(vae, config.dataset_size, config.seed, sample, captions_of)
    side = int(math.isqrt(latents.shape[1]))
    img_ids = FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
    txt_ids = torch.zeros(tokens.shape[1], 3)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed + 7)
    model.train()
    started = time.monotonic()
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * cosine_lr(step, config.steps, config.warmup)
        idx = torch.randint(len(latents), (config.batch_size,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(config.batch_size, g)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        pred = model(
            hidden_states=x_t,
            timestep=sigma,
            pooled_projections=pooled[idx],
            encoder_hidden_states=tokens[idx],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - config.ema_decay)
        if on_step is not None:
            on_step(step, loss.item())
        if step % 100 == 0 or step == config.steps - 1:
            elapsed = time.monotonic() - started
            logger.info("transformer step %d/%d loss %.4f (%.0f s)", step, config.steps, loss.item(), elapsed)
    return ema.eval()
