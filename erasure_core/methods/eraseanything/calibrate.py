"""What an EraseAnything++ job measures on the model at hand to choose its own strength (this project's addition).

No judge, word list or label of any world enters here: every figure is a velocity of the model being erased, on
fixed draws (own seeds), so the same job measures the same way on a model the project has never seen.

  gap        ||vp - v0||^2 / ||vp||^2, frozen model, concept prompts vs. the same prompts with the anchor word, at
             states the frozen model samples for the concept prompts (a quarter, half and three quarters of the
             schedule). Small when the anchor itself draws the concept (a world whose prior shape is the concept:
             "a thing" comes out as a circle); ESD toward such an anchor moves nothing.
  eta        chosen so the ESD target v0 - eta (vp - v0) lies a fixed distance `push` from vp in the same units:
             (1 + eta)^2 gap = push, never below the configured eta: the weaker the anchor's contrast, the further
             past it the concept is pushed.
  survival   ||v_lora - target||^2 / ||vp - target||^2 on the same states with the adapter on: 1 untouched, 0 at the
             erasure target. Training stops once it is <= `survival_target`.
  drift      ||v_lora - v_frozen||^2 / ||v_frozen||^2 on preserve images noised at the schedule's levels (fixed
             draws): how far what must be kept has moved. Above `drift_max`, the preservation weight doubles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.methods.eraseanything import losses

logger = logging.getLogger(__name__)

PROBE_SEED = 4242  # the probes' own draws: training's generator is not touched, so resumed runs take the same path


@dataclass
class ConceptProbe:
    """Fixed states for the concept prompts and the frozen model's anchor (v0) and concept (vp) velocities there."""

    z: torch.Tensor
    sigma: torch.Tensor
    cond: Any
    v0: torch.Tensor
    vp: torch.Tensor

    @property
    def gap(self) -> float:
        return float((self.vp - self.v0).pow(2).mean() / self.vp.pow(2).mean().clamp_min(1e-12))


@dataclass
class KeepProbe:
    """Fixed noised preserve images, their prompts, and the frozen model's velocity there."""

    x_t: torch.Tensor
    sigma: torch.Tensor
    cond: Any
    v_frozen: torch.Tensor


def _levels(steps: int) -> list[int]:
    return sorted({min(max(1, s), steps - 1) for s in (steps // 4, steps // 2, 3 * steps // 4)} - {0}) or [0]


@torch.no_grad()
def _states(ops: Any, pipe: Any, concept: Any, steps: int, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """States the model samples for encoded concept prompts, stopped at each probe level (the probe's own draws)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    zs, sigmas = [], []
    for stop in _levels(steps):
        z, sigma = ops.sample_partial(pipe, concept, steps, stop, generator, size)
        zs.append(z)
        sigmas.append(sigma)
    return torch.cat(zs), torch.cat(sigmas)


@torch.no_grad()
def concept_probe(trainer: Any, prompts_per_level: int = 4) -> ConceptProbe:
    """States sampled by the frozen model for the concept prompts (words in order), with v0 and vp there."""
    ops, pipe, size, steps = trainer.ops, trainer.pipe, trainer.size, trainer.cfg.sample_steps
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(prompts_per_level)]
    concept = ops.encode_text(pipe, prompts)
    anchor_prompts = [p.replace(trainer.keyword, trainer.anchor) for p in prompts]
    anchor = ops.encode_text(pipe, anchor_prompts if trainer.anchor_cond is None else [trainer.anchor] * len(prompts))
    with trainer.lora.switched(False):
        z, sigma = _states(ops, pipe, concept, steps, size)
        reps = len(z) // len(prompts)
        cond = _repeat(concept, reps)
        v0 = ops.velocity(pipe, z, sigma, _repeat(anchor, reps), size)
        vp = ops.velocity(pipe, z, sigma, cond, size)
    return ConceptProbe(z, sigma, cond, v0, vp)


@torch.no_grad()
def anchor_gaps(
    pipe: Any,
    ops: Any,
    prompts: list[str],
    keyword: str,
    words: list[str],
    steps: int,
    size: int | None,
    prompts_per_level: int = 4,
) -> dict[str, float]:
    """`ConceptProbe.gap` of each candidate anchor word, the word replacing `keyword` in the concept prompts, on the
    model as it is (call it before any adapter is attached): one set of sampled states for every word."""
    prompts = [prompts[i % len(prompts)] for i in range(prompts_per_level)]
    concept = ops.encode_text(pipe, prompts)
    z, sigma = _states(ops, pipe, concept, steps, size)
    reps = len(z) // len(prompts)
    vp = ops.velocity(pipe, z, sigma, _repeat(concept, reps), size)
    gaps = {}
    for word in dict.fromkeys(words):
        anchor = ops.encode_text(pipe, [p.replace(keyword, word) for p in prompts])
        v0 = ops.velocity(pipe, z, sigma, _repeat(anchor, reps), size)
        gaps[word] = round(float((vp - v0).pow(2).mean() / vp.pow(2).mean().clamp_min(1e-12)), 5)
    return gaps


def _repeat(cond: Any, reps: int) -> Any:
    idx = torch.arange(cond.tokens.shape[0]).repeat(reps)
    return cond.index(idx)


def strength_for(gap: float, push: float, floor: float, cap: float = 10.0) -> float:
    """The ESD eta that puts the target `push` (squared, relative) from vp: (1 + eta)^2 gap = push."""
    if gap <= 0:
        return cap
    return float(min(cap, max(floor, (push / gap) ** 0.5 - 1)))


@torch.no_grad()
def survival(trainer: Any, probe: ConceptProbe, eta: float) -> float:
    """How much of the way to the ESD target the adapter has not yet gone (1 untouched, 0 there)."""
    target = losses.esd_target(probe.v0, probe.vp, eta)
    vn = trainer.ops.velocity(trainer.pipe, probe.z, probe.sigma, probe.cond, trainer.size)
    return float((vn - target).pow(2).mean() / (probe.vp - target).pow(2).mean().clamp_min(1e-12))


@torch.no_grad()
def keep_probe(trainer: Any, rows: int = 8) -> KeepProbe | None:
    """Preserve images noised at the schedule's levels with the probe seed; None when the job has none."""
    latents = trainer.preserve_latents
    if trainer.preserve_cond is None or len(latents) == 0:
        return None
    g = torch.Generator().manual_seed(PROBE_SEED)
    idx = torch.randperm(len(latents), generator=g)[:rows]
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=g).to(x0)
    levels = trainer.ops.sigmas(trainer.pipe, trainer.cfg.sample_steps, trainer.size)[:-1]
    sigma = levels[torch.randint(0, len(levels), (len(idx),), generator=g)].to(x0)
    x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    cond = trainer.preserve_cond.index(idx)
    with trainer.lora.switched(False):
        v_frozen = trainer.ops.velocity(trainer.pipe, x_t, sigma, cond, trainer.size)
    return KeepProbe(x_t, sigma, cond, v_frozen)


@torch.no_grad()
def drift(trainer: Any, probe: KeepProbe) -> float:
    v = trainer.ops.velocity(trainer.pipe, probe.x_t, probe.sigma, probe.cond, trainer.size)
    return float((v - probe.v_frozen).pow(2).mean() / probe.v_frozen.pow(2).mean().clamp_min(1e-12))


class Controller:
    """Chooses eta from the gap of the job's anchor (chosen before the trainer exists: `method.measured_anchor`)
    before training, then every `check_every` steps measures survival and drift: stops once the concept is gone,
    doubles the preservation weight when what must be kept moves. Its choices live on the trainer (`eta`,
    `lambda_preserve`, `done`) and are checkpointed; what it measured goes to `trainer.measured` (the artifact's
    stats)."""

    def __init__(self, trainer: Any) -> None:
        cfg = trainer.cfg
        self.trainer, self.every = trainer, cfg.check_every
        self.cap = cfg.max_steps or 2 * cfg.steps
        self.probe = concept_probe(trainer)
        if not trainer.measured:  # a resumed run has its choices in the checkpoint
            self._choose(round(self.probe.gap, 5))
        self.keep = keep_probe(trainer)

    def _choose(self, gap: float) -> None:
        t, cfg = self.trainer, self.trainer.cfg
        t.eta = strength_for(gap, cfg.push, cfg.eta)
        t.measured = {
            "anchor": t.anchor,
            "gap": gap,
            # The anchor's contrast is too small for the configured eta to reach `push`: pushed further past it.
            "eta_raised": t.eta > cfg.eta,
            "eta": round(t.eta, 3),
            "checks": [],
        }
        logger.info("EraseAnything++ calibration: %s", t.measured)

    def check(self) -> dict[str, float]:
        t, cfg = self.trainer, self.trainer.cfg
        figures = {"survival": round(survival(t, self.probe, t.eta), 4)}
        if self.keep is not None:
            figures["drift"] = round(drift(t, self.keep), 5)
        self._steer(figures)
        t.measured["checks"].append({"step": t.step, **figures, "lr": t.lr, "lambda_preserve": t.lambda_preserve})
        t.done = t.step >= cfg.min_steps and figures["survival"] <= cfg.survival_target
        logger.info("EraseAnything++ step %d: %s (lr %g, lambda_preserve %g)", t.step, figures, t.lr, t.lambda_preserve)
        return figures

    def _steer(self, figures: dict[str, float]) -> None:
        """Backs off when the kept prompts drift (preservation x2, rate / 2). When the survival falls too slowly to
        reach the target by the cap and the kept prompts have room to move: first a higher rate, then, once the rate
        is at its cap and the survival has stalled, a lighter preservation weight (the balance that holds it)."""
        t, cfg = self.trainer, self.trainer.cfg
        now, drifted = figures["survival"], figures.get("drift", 0.0)
        last = t.measured["checks"][-1]["survival"] if t.measured["checks"] else 1.0
        if drifted > cfg.drift_max:
            t.lambda_preserve = min(t.lambda_preserve * 2, cfg.lambda_preserve)
            t.set_lr(max(t.lr / 2, cfg.lr))
            return
        left = (self.cap - t.step) / self.every  # checks left before the cap
        if now - left * max(last - now, 0.0) <= cfg.survival_target or drifted >= cfg.drift_max / 4:
            return
        if t.lr < cfg.lr * cfg.max_lr_factor:
            t.set_lr(min(t.lr * 1.5, cfg.lr * cfg.max_lr_factor))
        elif now >= last - 0.01:
            t.lambda_preserve = max(t.lambda_preserve / 2, cfg.lambda_preserve / 8)

    def finish(self) -> None:
        t = self.trainer
        last = t.measured["checks"][-1] if t.measured["checks"] else {}
        t.measured.update(
            steps=t.step,
            survival=last.get("survival"),
            drift=last.get("drift"),
            met=bool(t.done),
            lr=t.lr,
            lambda_preserve=t.lambda_preserve,
        )
