"""Temporal erasure metrics on the video demo world: the per-frame concept-rate curve and first-vs-last leakage.

A video erasure can hold on the first frames and leak later (a concept suppressed early comes back as the clip
goes on), which a clip-level rate hides. So every clip is judged frame by frame with the video world's per-frame judge
(the image judge, `video_world.load_frame_judge`), and each figure is a curve over frame index:

  target rate[f]   fraction of the target's clips ("a {colour} {target}", fixed seeds) whose frame f shows the target;
  others[s][f]     fraction of shape s's clips whose frame f shows s (what the erasure must leave alone);
  leakage          target rate[last] - target rate[first] (positive: the concept comes back later in the clip).

Generation goes through any `generate(prompts, seeds) -> clips [N, F, 3, H, W]` callable (an engine with an erasure
set active, the pipeline, or HTTP), so the core, the bench and the service tests measure the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from erasure_core.worlds.judge import ShapeJudge, judge_images
from erasure_core.worlds.shapes import SHAPES, caption
from erasure_core.worlds.video_world import load_frame_judge

ClipSource = Callable[[list[str], list[int]], torch.Tensor]


def frame_rates(clips: torch.Tensor, shape: str, judge: ShapeJudge | None = None) -> list[float]:
    """Per frame index: the fraction of clips [N, F, 3, H, W] whose frame is judged as `shape`."""
    judge = judge or load_frame_judge()
    n, f = clips.shape[:2]
    names = judge_images(clips.reshape(n * f, *clips.shape[2:]).float(), judge).shape_names()
    return [sum(names[i * f + j] == shape for i in range(n)) / n for j in range(f)]


@dataclass
class TemporalReport:
    """Per-frame judged rates of one erasure set (see the module docstring)."""

    target: str
    target_rate: list[float]
    others: dict[str, list[float]]
    clips_per_shape: dict[str, int] = field(default_factory=dict)

    @property
    def leakage(self) -> float:
        """Last frame's target rate minus the first frame's."""
        return self.target_rate[-1] - self.target_rate[0]

    @property
    def max_target_rate(self) -> float:
        return max(self.target_rate)

    @property
    def others_mean(self) -> list[float]:
        """Per frame: the other shapes' rates averaged over shapes."""
        frames = len(self.target_rate)
        return [sum(rates[f] for rates in self.others.values()) / len(self.others) for f in range(frames)]

    def others_change(self, base: TemporalReport) -> list[float]:
        """Per frame: the largest change (either sign) of any other shape's rate against `base`."""
        frames = len(self.target_rate)
        return [max(abs(self.others[s][f] - base.others[s][f]) for s in self.others) for f in range(frames)]

    def others_mean_change(self, base: TemporalReport) -> list[float]:
        """Per frame: the change of the other shapes' mean rate against `base`."""
        return [a - b for a, b in zip(self.others_mean, base.others_mean, strict=True)]

    def to_json(self, base: TemporalReport | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "target_rate": [round(r, 4) for r in self.target_rate],
            "leakage": round(self.leakage, 4),
            "max_target_rate": round(self.max_target_rate, 4),
            "others": {s: [round(r, 4) for r in rates] for s, rates in self.others.items()},
            "others_mean": [round(r, 4) for r in self.others_mean],
            "clips_per_shape": dict(self.clips_per_shape),
        }
        if base is not None:
            out["others_max_change"] = [round(c, 4) for c in self.others_change(base)]
            out["others_mean_change"] = [round(c, 4) for c in self.others_mean_change(base)]
        return out


def shape_prompts(shape: str, colors: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """("a {colour} {shape}" for each colour x seed, the seeds) in a fixed order."""
    jobs = [(color, seed) for color in colors for seed in seeds]
    return [caption(shape, color) for color, _ in jobs], [seed for _, seed in jobs]


def measure_temporal(
    generate: ClipSource,
    target: str,
    colors: Sequence[str],
    seeds: Sequence[int],
    others: Sequence[str] | None = None,
    other_colors: Sequence[str] | None = None,
    other_seeds: Sequence[int] | None = None,
    judge: ShapeJudge | None = None,
) -> TemporalReport:
    """Generates the target's clips and each other shape's (default: every other shape, the same colours and seeds)
    and judges every frame."""
    judge = judge or load_frame_judge()
    others = [s for s in SHAPES if s != target] if others is None else list(others)
    counts: dict[str, int] = {}
    rates: dict[str, list[float]] = {}
    for shape in (target, *others):
        is_target = shape == target
        prompts, seed_list = shape_prompts(
            shape,
            colors if is_target or other_colors is None else other_colors,
            seeds if is_target or other_seeds is None else other_seeds,
        )
        rates[shape] = frame_rates(generate(prompts, seed_list), shape, judge)
        counts[shape] = len(prompts)
    return TemporalReport(target, rates.pop(target), rates, counts)
