"""What an EraseAnything++ video run measures about itself at the end of training: the per-frame erasure residual.

The trainer has no judge (a real model has none), so it does not report concept rates. What it can measure is how
far the trained LoRA moved the concept's velocity onto the ESD target in each latent frame, on fixed draws:

  residual[f] = ||v_lora - target||^2 / ||v_frozen - target||^2 over the tokens of latent frame f,

with target = v0 - eta (vp - v0) from the frozen model (v0: the anchor prompt, vp: the concept prompt), at states
x_t the current model samples for the concept prompts (fixed seeds; a quarter, half and three quarters of the
schedule). 1 means the frame is untouched, 0 that it reaches the erasure target; `leakage` is last minus first.
The judged per-frame concept rates of a clip are measured outside (`erasure_core.worlds.video_metrics`, the bench
and the tests); this is the trainer's own figure, and is reported as such.
"""

from __future__ import annotations

from typing import Any

import torch

from erasure_core.methods.eraseanything import losses

MEASURE_SEED = 2024


@torch.no_grad()
def frame_residuals(trainer: Any, prompts_per_level: int = 4) -> dict[str, Any]:
    """The per-latent-frame residual of a trained (video) `EraseAnythingTrainer`, with its LoRA still on."""
    ops, pipe, cfg, size = trainer.ops, trainer.pipe, trainer.cfg, trainer.size
    frames = ops.token_frames(pipe, size)
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(prompts_per_level)]
    concept = ops.encode_text(pipe, prompts)
    if trainer.anchor_cond is None:
        anchor = ops.encode_text(pipe, [p.replace(trainer.keyword, trainer.anchor) for p in prompts])
    else:
        anchor = ops.encode_text(pipe, [trainer.anchor] * len(prompts))
    generator = torch.Generator().manual_seed(MEASURE_SEED)
    after = torch.zeros(int(frames.max()) + 1)
    before = torch.zeros_like(after)
    steps = cfg.sample_steps
    for stop in sorted({max(1, steps // 4), max(1, steps // 2), max(1, 3 * steps // 4)}):
        z, sigma = ops.sample_partial(pipe, concept, steps, min(stop, steps - 1), generator, size)
        with trainer.lora.switched(False):
            v0 = ops.velocity(pipe, z, sigma, anchor, size)
            vp = ops.velocity(pipe, z, sigma, concept, size)
        vn = ops.velocity(pipe, z, sigma, concept, size)
        target = losses.esd_target(v0, vp, trainer.eta)
        after += losses.frame_errors(vn, target, frames).cpu()
        before += losses.frame_errors(vp, target, frames).cpu()
    residual = (after / before.clamp_min(1e-12)).tolist()
    return {
        "measured": "trainer: per-latent-frame ESD residual ||v_lora - target||^2 / ||v_frozen - target||^2",
        "frame_residual": [round(r, 4) for r in residual],
        "leakage": round(residual[-1] - residual[0], 4),
        "temporal_weight": cfg.temporal_weight,
    }
