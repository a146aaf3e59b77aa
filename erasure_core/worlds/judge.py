"""The demo worlds' judge: a small CNN that names the shape and the colour in an image.

It is the ground truth of every erasure test and report: an erasure "works" only when the judge, on generated
samples over fixed seeds, stops seeing the erased concept while it still sees everything else. The shape head has
an extra "none" class (blank or unrecognisable images), so a sample that draws nothing is not forced into a shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES

NONE_CLASS = len(SHAPES)
SHAPE_CLASSES: tuple[str, ...] = (*SHAPES, "none")
JUDGE_WEIGHTS = Path(__file__).parent / "weights" / "judge.safetensors"


class ShapeJudge(nn.Module):
    """Conv net with a shape head (shapes + "none") and a colour head, for 32x32 RGB images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 96, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.shape_head = nn.Linear(96, len(SHAPE_CLASSES))
        self.color_head = nn.Linear(96, len(COLOR_NAMES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.shape_head(h), self.color_head(h)


@dataclass(frozen=True)
class Verdict:
    """Judged labels for a batch: indices into `SHAPE_CLASSES` and `COLOR_NAMES`."""

    shapes: torch.Tensor
    colors: torch.Tensor

    def shape_names(self) -> list[str]:
        return [SHAPE_CLASSES[int(i)] for i in self.shapes]


def load_judge(path: Path = JUDGE_WEIGHTS) -> ShapeJudge:
    """Loads the committed judge (safetensors) in eval mode."""
    judge = ShapeJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


def save_judge(judge: ShapeJudge, path: Path = JUDGE_WEIGHTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path))


@torch.no_grad()
def judge_images(images: torch.Tensor, judge: ShapeJudge | None = None) -> Verdict:
    """Judges images [N, 3, H, W] in [0, 1] (resized to 32x32 when needed)."""
    judge = judge or load_judge()
    if images.shape[-2:] != (32, 32):
        images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    shape_logits, color_logits = judge(images.float())
    return Verdict(shape_logits.argmax(1), color_logits.argmax(1))
