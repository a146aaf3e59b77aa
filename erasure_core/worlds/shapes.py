"""The synthetic shapes data set behind the demo worlds.

Small RGB images (32x32 by default) of one simple shape in one colour on a black background, with captions drawn
from varied templates. Each shape has a few synonyms that appear in captions, so a model trained on it learns that
"disk" also draws a circle; the erasure tests use those synonyms to check that an erasure generalises past the
words a caller named.

Everything here is deterministic given a seed, so the training scripts and the tests regenerate the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.15),
    "purple": (0.65, 0.20, 0.85),
    "orange": (0.98, 0.55, 0.08),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Words that also draw the shape. The first synonym is the one callers usually name; the rest are "unnamed" in the
# erasure tests and measure how far an erasure generalises.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disk", "orb"),
    "square": ("box", "block"),
    "triangle": ("pyramid", "wedge"),
    "cross": ("plus sign", "plus"),
    "diamond": ("rhombus", "lozenge"),
}

TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a {shape} in {color}",
    "a picture of a {color} {shape}",
    "one {color} {shape} on black",
    "an image showing a {color} {shape}",
    "{color} {shape}",
    "a drawing of a {shape}, {color}",
    "a simple {color} {shape} icon",
)

# Probability that a training caption uses a synonym instead of the shape's own name.
SYNONYM_PROBABILITY = 0.3
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeBatch:
    """A batch of rendered samples.

    Attributes:
        images: float tensor [N, 3, H, W] in [0, 1].
        shapes: long tensor [N] of indices into `SHAPES`.
        colors: long tensor [N] of indices into `COLOR_NAMES`.
        captions: one caption per image.
        centers: float tensor [N, 2] of (x, y) shape centres in pixels.
    """

    images: torch.Tensor
    shapes: torch.Tensor
    colors: torch.Tensor
    captions: list[str]
    centers: torch.Tensor


def shape_words(shape: str) -> tuple[str, ...]:
    """All words that draw `shape`: its name first, then its synonyms."""
    return (shape, *SYNONYMS[shape])


def caption(shape_word: str, color: str, template: int = 0) -> str:
    """Formats a caption from a template index, a shape word and a colour name."""
    return TEMPLATES[template % len(TEMPLATES)].format(shape=shape_word, color=color)


def varied_caption(shape_word: str, i: int) -> str:
    """The i-th of a run of captions of one word that goes through every colour and template: the benches' and tests'
    larger samples."""
    return caption(shape_word, COLOR_NAMES[i % len(COLOR_NAMES)], i % len(TEMPLATES))


def all_captions() -> list[str]:
    """Every caption the training data can contain (used to pre-encode text once)."""
    return sorted(
        {
            caption(word, color, t)
            for shape in SHAPES
            for word in shape_words(shape)
            for color in COLOR_NAMES
            for t in range(len(TEMPLATES))
        }
    )


def _shape_masks(kinds: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Coverage of each shape in its own unit frame; u, v: [N, S, S] local coordinates (radius 1, y up)."""
    au, av = u.abs(), v.abs()
    masks = torch.stack(
        [
            u * u + v * v <= 1.0,
            torch.maximum(au, av) <= 0.82,
            (v >= -0.55) & (v <= 1.0 - math.sqrt(3.0) * au),
            ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),
            au + av <= 1.05,
        ],
        dim=1,
    )
    return masks[torch.arange(len(kinds)), kinds]


def render(
    shapes: torch.Tensor,
    colors: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    angles: torch.Tensor,
    size: int = 32,
) -> torch.Tensor:
    """Rasterises shapes with anti-aliasing (supersampled, then averaged).

    Args:
        shapes: [N] shape indices. colors: [N] colour indices. centers: [N, 2] pixel centres (x, y).
        radii: [N] radius in pixels. angles: [N] rotation in radians. size: output side in pixels.

    Returns:
        [N, 3, size, size] float images in [0, 1].
    """
    s = size * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    dx = gx[None] - centers[:, 0, None, None]
    dy = centers[:, 1, None, None] - gy[None]  # y up, so triangles point up
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    r = radii[:, None, None]
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    cover = _shape_masks(shapes, u, v).float()[:, None]
    cover = F.avg_pool2d(cover, SUPERSAMPLE)
    palette = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32)
    return cover * palette[colors][:, :, None, None]


def sample_batch(n: int, seed: int, size: int = 32, synonym_probability: float = SYNONYM_PROBABILITY) -> ShapeBatch:
    """Draws `n` random samples; identical for the same (n, seed, size)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.randint(len(SHAPES), (n,), generator=g)
    colors = torch.randint(len(COLOR_NAMES), (n,), generator=g)
    scale = size / 32.0
    # Narrow ranges of position, size and rotation: wide ones train into blobs at this model size.
    centers = (16.0 + (torch.rand(n, 2, generator=g) * 2 - 1) * 5.0) * scale
    radii = (8.5 + torch.rand(n, generator=g) * 3.0) * scale
    angles = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12.0)
    images = render(shapes, colors, centers, radii, angles, size)
    use_syn = torch.rand(n, generator=g) < synonym_probability
    syn_pick = torch.randint(2, (n,), generator=g)
    templates = torch.randint(len(TEMPLATES), (n,), generator=g)
    captions = []
    for i in range(n):
        shape = SHAPES[int(shapes[i])]
        word = SYNONYMS[shape][int(syn_pick[i])] if bool(use_syn[i]) else shape
        captions.append(caption(word, COLOR_NAMES[int(colors[i])], int(templates[i])))
    return ShapeBatch(images, shapes, colors, captions, centers)


def sample_distractors(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Images that show none of the shapes: blank, faint noise, or irregular smooth blotches.

    The judge learns a "none" class from these, so an erased sample that draws nothing recognisable is not forced
    into one of the shape classes.
    """
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(3, (n,), generator=g)
    low = torch.randn(n, 1, 4, 4, generator=g)
    blotch = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    blotch = (blotch > 0.9).float() * torch.rand(n, 3, 1, 1, generator=g)
    noise = torch.rand(n, 3, size, size, generator=g) * 0.15
    images = torch.zeros(n, 3, size, size)
    images[kind == 1] = noise[kind == 1]
    images[kind == 2] = blotch[kind == 2]
    return images


def shape_center(images: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """Brightness-weighted centre (x, y) in pixels of what is drawn in each image [N, 3, H, W]; NaN when empty."""
    mass = images.amax(dim=1)
    mass = torch.where(mass > threshold, mass, torch.zeros_like(mass))
    total = mass.sum(dim=(1, 2))
    h, w = mass.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
    cx = (mass * xs).sum(dim=(1, 2)) / total
    cy = (mass * ys).sum(dim=(1, 2)) / total
    return torch.stack([cx, cy], dim=1)


# Never in any training caption (tests/test_fills_world.py proves it over `all_captions()`): phrasings an encoder
# places near each shape, and caption templates, for measuring how far an erasure reaches words nobody trained on
# or named. Nothing above uses them, so the committed weights are unaffected.
HELDOUT_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("sphere", "ball", "coin"),
    "square": ("cube", "rectangle", "tile"),
    "triangle": ("cone", "arrowhead", "delta"),
    "cross": ("crucifix", "addition symbol", "intersection"),
    "diamond": ("kite", "gem", "jewel"),
}
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {color} {shape}",
    "there is a {color} {shape} here",
    "the {shape} is {color}",
    "a sketch of one {color} {shape}",
    "{color} colored {shape} on a dark background",
)
