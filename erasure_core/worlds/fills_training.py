"""Training of the fills world's parts: library code for `scripts/train_fills_world.py`.

The VAE and the transformer are trained by `training.py`'s functions with the fills data set passed in (same
objectives, same architecture configurations as the shapes world). Only the judge differs: it has a third head (the
fill style), and its augmentation blurs less than the shapes judge's, because a 3x3 box blur wipes out a 4-pixel
pattern that the generator does reproduce.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from erasure_core.worlds.fills import sample_batch, sample_distractors
from erasure_core.worlds.fills_judge import NONE_CLASS, FillsJudge
from erasure_core.worlds.training import TransformerTrainConfig, cosine_lr

logger = logging.getLogger(__name__)


def fills_transformer_config(steps: int = 3600, seed: int = 0) -> TransformerTrainConfig:
    """The fills world's transformer run (sized for about 30 minutes on one CPU thread)."""
    return TransformerTrainConfig(steps=steps, seed=seed)


def augment_like_samples(images: torch.Tensor, g: torch.Generator, vae: AutoencoderKL | None) -> torch.Tensor:
    """Makes clean renders look like generated samples: VAE round trip, a light blur, noise, brightness jitter."""
    out = images
    if vae is not None:
        with torch.no_grad():
            half = len(out) // 2
            recon = vae.decode(vae.encode(out[:half] * 2 - 1).latent_dist.mode()).sample
            out = torch.cat([(recon.clamp(-1, 1) + 1) / 2, out[half:]])
    blur = torch.rand(len(out), 1, 1, 1, generator=g) < 0.2
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(blur, 0.6 * out + 0.4 * blurred, out)
    out = out * (0.8 + 0.4 * torch.rand(len(out), 1, 1, 1, generator=g))
    out = out + 0.04 * torch.randn(out.shape, generator=g)
    return out.clamp(0, 1)


def train_fills_judge(
    steps: int = 1200, batch_size: int = 128, seed: int = 0, vae: AutoencoderKL | None = None
) -> FillsJudge:
    """Trains the judge on renders (shape, colour and fill heads) and distractors (the "none" shape class)."""
    torch.manual_seed(seed)
    judge = FillsJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed + 1)
    judge.train()
    n_none = batch_size // 8
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * cosine_lr(step, steps, 50)
        batch = sample_batch(batch_size - n_none, seed=20_000_000 + step)
        images = torch.cat([batch.images, sample_distractors(n_none, seed=30_000_000 + step)])
        images = augment_like_samples(images, g, vae)
        shapes = torch.cat([batch.shapes, torch.full((n_none,), NONE_CLASS)])
        shape_logits, color_logits, fill_logits = judge(images)
        loss = (
            F.cross_entropy(shape_logits, shapes)
            + F.cross_entropy(color_logits[:-n_none], batch.colors)
            + F.cross_entropy(fill_logits[:-n_none], batch.fills)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("fills judge step %d/%d loss %.4f", step, steps, loss.item())
    return judge.eval()
