"""Synthetic clips for the video demo world: one shape of `shapes.py` moving in a straight line.

Each clip shows one shape in one colour on black for `CLIP_FRAMES` frames (9 = 1 + 2 x 4, what the tiny causal VAE
with temporal ratio 4 turns into 3 latent frames). The shape slides along one of four directions by `MIN_TRAVEL` to
`MAX_TRAVEL` pixels over the clip (rotating a little), through the middle of the frame, so every frame stays inside
the range of positions the image judge was trained on. Frames are drawn with `shapes.render`, so each frame is an
image of the image world and the image judge serves as a per-frame judge.

Captions reuse the image world's templates, synonyms and colours; half of them name the direction ("..., moving
left"). Everything is deterministic given a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from erasure_core.worlds.shapes import (
    COLOR_NAMES,
    SHAPES,
    SYNONYM_PROBABILITY,
    SYNONYMS,
    TEMPLATES,
    caption,
    render,
    shape_words,
)

CLIP_FRAMES = 9
CLIP_SIZE = 32
# Direction name -> unit (dx, dy) in pixels with y down (image rows).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
DIRECTION_NAMES: tuple[str, ...] = tuple(DIRECTIONS)
MIN_TRAVEL = 7.0
MAX_TRAVEL = 10.0
DIRECTION_PROBABILITY = 0.5


@dataclass(frozen=True)
class ClipBatch:
    """A batch of clips.

    Attributes:
        frames: float tensor [N, F, 3, H, W] in [0, 1].
        shapes: long tensor [N] of indices into `SHAPES`.
        colors: long tensor [N] of indices into `COLOR_NAMES`.
        directions: long tensor [N] of indices into `DIRECTION_NAMES`.
        captions: one caption per clip (without the pipeline's FPS / motion-score suffix).
        centers: float tensor [N, F, 2] of (x, y) shape centres in pixels.
    """

    frames: torch.Tensor
    shapes: torch.Tensor
    colors: torch.Tensor
    directions: torch.Tensor
    captions: list[str]
    centers: torch.Tensor


def motion_caption(shape_word: str, color: str, template: int = 0, direction: str | None = None) -> str:
    """A shape caption, with ", moving {direction}" appended when a direction is given."""
    text = caption(shape_word, color, template)
    return text if direction is None else f"{text}, moving {direction}"


def all_clip_captions() -> list[str]:
    """Every caption the clip data can contain (used to pre-encode text once)."""
    return sorted(
        {
            motion_caption(word, color, t, d)
            for shape in SHAPES
            for word in shape_words(shape)
            for color in COLOR_NAMES
            for t in range(len(TEMPLATES))
            for d in (None, *DIRECTION_NAMES)
        }
    )


def sample_clips(
    n: int,
    seed: int,
    frames: int = CLIP_FRAMES,
    size: int = CLIP_SIZE,
    synonym_probability: float = SYNONYM_PROBABILITY,
    direction_probability: float = DIRECTION_PROBABILITY,
) -> ClipBatch:
    """Draws `n` random clips; identical for the same arguments."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.randint(len(SHAPES), (n,), generator=g)
    colors = torch.randint(len(COLOR_NAMES), (n,), generator=g)
    directions = torch.randint(len(DIRECTION_NAMES), (n,), generator=g)
    scale = size / 32.0
    unit = torch.tensor([DIRECTIONS[d] for d in DIRECTION_NAMES])[directions]  # [n, 2]
    travel = (MIN_TRAVEL + torch.rand(n, generator=g) * (MAX_TRAVEL - MIN_TRAVEL)) * scale
    # Path through the middle, offset a little across the direction of motion.
    across = torch.stack([-unit[:, 1], unit[:, 0]], dim=1) * ((torch.rand(n, 1, generator=g) * 2 - 1) * 3.0 * scale)
    middle = 16.0 * scale + across
    radii = (8.5 + torch.rand(n, generator=g) * 2.5) * scale  # the judge's training range: it misses smaller shapes
    angle0 = (torch.rand(n, generator=g) * 2 - 1) * math.radians(6.0)
    spin = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12.0)  # angles stay within +-12 degrees
    progress = torch.linspace(-0.5, 0.5, frames) if frames > 1 else torch.zeros(1)  # [F]
    centers = middle[:, None] + unit[:, None] * travel[:, None, None] * progress[None, :, None]  # [n, F, 2]
    angles = angle0[:, None] + spin[:, None] * progress[None]
    images = render(
        shapes.repeat_interleave(frames),
        colors.repeat_interleave(frames),
        centers.reshape(-1, 2),
        radii.repeat_interleave(frames),
        angles.reshape(-1),
        size,
    ).reshape(n, frames, 3, size, size)
    use_syn = torch.rand(n, generator=g) < synonym_probability
    syn_pick = torch.randint(2, (n,), generator=g)
    templates = torch.randint(len(TEMPLATES), (n,), generator=g)
    named = torch.rand(n, generator=g) < direction_probability
    captions = []
    for i in range(n):
        shape = SHAPES[int(shapes[i])]
        word = SYNONYMS[shape][int(syn_pick[i])] if bool(use_syn[i]) else shape
        direction = DIRECTION_NAMES[int(directions[i])] if bool(named[i]) else None
        captions.append(motion_caption(word, COLOR_NAMES[int(colors[i])], int(templates[i]), direction))
    return ClipBatch(images, shapes, colors, directions, captions, centers)
