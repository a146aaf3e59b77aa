"""The fills world's judge: a small CNN that names the shape, the colour and the fill style in an image.

The ground truth of the fills world's tests and reports, one head per factor: shape (plus "none" for blank or
unrecognisable images, so a sample that draws nothing is not forced into a shape), colour, and fill. An artist
erasure is judged through the fill head (each artist stands for one fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from erasure_core.worlds.fills import COLOR_NAMES, FILLS, SHAPES

NONE_CLASS = len(SHAPES)
SHAPE_CLASSES: tuple[str, ...] = (*SHAPES, "none")
FILLS_JUDGE_WEIGHTS = Path(__file__).parent / "weights" / "fills_judge.safetensors"
JUDGE_SIZE = 32


class FillsJudge(nn.Module):
    """Conv net with shape (shapes + "none"), colour and fill heads, for 32x32 RGB images in [0, 1].

    The first two layers keep full resolution, so the 4-pixel fill patterns reach the heads intact.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 48, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 96, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(96, 128, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.shape_head = nn.Linear(128, len(SHAPE_CLASSES))
        self.color_head = nn.Linear(128, len(COLOR_NAMES))
        self.fill_head = nn.Linear(128, len(FILLS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.shape_head(h), self.color_head(h), self.fill_head(h)


@dataclass(frozen=True)
class FillsVerdict:
    """Judged labels for a batch: indices into `SHAPE_CLASSES`, `COLOR_NAMES` and `FILLS`."""

    shapes: torch.Tensor
    colors: torch.Tensor
    fills: torch.Tensor

    def shape_names(self) -> list[str]:
        return [SHAPE_CLASSES[int(i)] for i in self.shapes]

    def color_names(self) -> list[str]:
        return [COLOR_NAMES[int(i)] for i in self.colors]

    def fill_names(self) -> list[str]:
        return [FILLS[int(i)] for i in self.fills]


def load_fills_judge(path: Path = FILLS_JUDGE_WEIGHTS) -> FillsJudge:
    """Loads the committed fills judge (safetensors) in eval mode."""
    judge = FillsJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


def save_fills_judge(judge: FillsJudge, path: Path = FILLS_JUDGE_WEIGHTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path))


@torch.no_grad()
def judge_fills(images: torch.Tensor, judge: FillsJudge | None = None, batch: int = 512) -> FillsVerdict:
    """Judges images [N, 3, H, W] in [0, 1] (resized to 32x32 when needed)."""
    judge = judge or load_fills_judge()
    if images.shape[-2:] != (JUDGE_SIZE, JUDGE_SIZE):
        images = nn.functional.interpolate(images, size=(JUDGE_SIZE, JUDGE_SIZE), mode="bilinear", antialias=True)
    outs = [judge(images[i : i + batch].float()) for i in range(0, len(images), batch)]
    shape_logits, color_logits, fill_logits = (torch.cat(parts) for parts in zip(*outs, strict=True))
    return FillsVerdict(shape_logits.argmax(1), color_logits.argmax(1), fill_logits.argmax(1))
