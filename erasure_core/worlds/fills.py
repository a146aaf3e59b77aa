"""The synthetic "fills" data set behind the second Flux demo world.

Small RGB images (32x32) of one shape in one colour and one FILL STYLE on a black background. Where the first world
(`shapes.py`) varies only what is drawn (object) and its colour, this one adds how it is drawn, so an erasure of a
style or an attribute can be exercised, not only of an object:

* shapes: star, heart, hexagon, crescent, arrow, each with two in-caption synonyms ("pentagram" also draws a star);
* colours: pink, cyan, white, gold, lime (none shared with the first world);
* fills: solid, outlined, striped, dotted, checkered. Patterned fills (striped, dotted, checkered) are drawn inside a
  thin outline, so the shape stays readable at this size. The patterns have a period of 4 pixels and are anchored
  to the image grid (like a paint program's texture fill), so every 4x4-pixel Flux token holds exactly one period;
* artists: made-up painter names that always stand for one fill ("in the style of Velmora" means striped). A caption
  names its fill either by the fill's word or by its artist, never both.

The module also lists what training never shows: held-out shape paraphrases (`HELDOUT_WORDS`), held-out fill words
(`HELDOUT_FILL_WORDS`) and held-out caption templates (`HELDOUT_TEMPLATES`, `HELDOUT_ARTIST_TEMPLATES`). The
erasure tests use them to measure how far an erasure reaches phrasings nobody trained on or named.

Everything here is deterministic given a seed, so the training script and the tests regenerate the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES: tuple[str, ...] = ("star", "heart", "hexagon", "crescent", "arrow")
COLORS: dict[str, tuple[float, float, float]] = {
    "pink": (1.00, 0.42, 0.72),
    "cyan": (0.10, 0.85, 0.95),
    "white": (0.95, 0.95, 0.95),
    "gold": (0.95, 0.70, 0.08),
    "lime": (0.45, 0.95, 0.10),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
FILLS: tuple[str, ...] = ("solid", "outlined", "striped", "dotted", "checkered")

# Made-up painters, each standing for exactly one fill style (the `kind: style` concepts of this world).
ARTISTS: dict[str, str] = {
    "Drummel": "solid",
    "Orvane": "outlined",
    "Velmora": "striped",
    "Quillon": "dotted",
    "Tessaly": "checkered",
}
ARTIST_OF: dict[str, str] = {fill: artist for artist, fill in ARTISTS.items()}

# Words that also draw the shape in training captions. The first synonym is the one callers usually name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "star": ("pentagram", "starburst"),
    "heart": ("valentine", "love symbol"),
    "hexagon": ("honeycomb", "hex"),
    "crescent": ("moon", "sickle"),
    "arrow": ("pointer", "dart"),
}

FILL_TEMPLATES: tuple[str, ...] = (
    "a {fill} {color} {shape}",
    "a {color} {shape}, {fill}",
    "a {fill} {shape} in {color}",
    "{color} {shape} drawn {fill}",
    "an icon of a {fill} {color} {shape}",
    "one {color} {shape}, {fill} style",
)
ARTIST_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} in the style of {artist}",
    "a {color} {shape} by {artist}",
    "{artist}: a {shape} in {color}",
    "a {shape} in {color}, after {artist}",
)

# Probability that a training caption uses a synonym instead of the shape's own name, and that it names the fill by
# its artist instead of its word.
SYNONYM_PROBABILITY = 0.3
ARTIST_PROBABILITY = 0.35
SUPERSAMPLE = 4
PATTERN_PERIOD = 4  # pixels
OUTLINE_WIDTH = 2.0  # pixels, the "outlined" fill
BORDER_WIDTH = 1.25  # pixels, the thin border around patterned fills

# Never in any training caption (tests/test_fills_world.py proves it over `all_captions()`): phrasings an encoder
# places near the concept, for measuring how far an erasure generalises.
HELDOUT_WORDS: dict[str, tuple[str, ...]] = {
    "star": ("five-pointed star", "starfish", "twinkle"),
    "heart": ("cupid", "sweetheart", "romance"),
    "hexagon": ("six-sided polygon", "beehive cell", "hexagonal tile"),
    "crescent": ("lunar sliver", "banana", "scythe"),
    "arrow": ("direction sign", "cursor", "spear"),
}
HELDOUT_FILL_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("filled", "opaque"),
    "outlined": ("hollow", "contour"),
    "striped": ("pinstriped", "banded"),
    "dotted": ("polka-dot", "speckled"),
    "checkered": ("chessboard", "tartan"),
}
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {fill} {color} {shape}",
    "there is a {color} {shape} here, {fill}",
    "the {shape} is {color} and {fill}",
    "clip art: {fill} {color} {shape}",
    "a small {color} {fill} {shape} sticker",
)
HELDOUT_ARTIST_TEMPLATES: tuple[str, ...] = (
    "a painting of a {color} {shape} by {artist}",
    "{artist} drew this {color} {shape}",
    "a {color} {shape}, artwork by {artist}",
)


@dataclass(frozen=True)
class FillBatch:
    """A batch of rendered samples.

    Attributes:
        images: float tensor [N, 3, H, W] in [0, 1].
        shapes: long tensor [N] of indices into `SHAPES`.
        colors: long tensor [N] of indices into `COLOR_NAMES`.
        fills: long tensor [N] of indices into `FILLS`.
        by_artist: bool tensor [N]: the caption names the fill by its artist.
        captions: one caption per image.
        centers: float tensor [N, 2] of (x, y) shape centres in pixels.
    """

    images: torch.Tensor
    shapes: torch.Tensor
    colors: torch.Tensor
    fills: torch.Tensor
    by_artist: torch.Tensor
    captions: list[str]
    centers: torch.Tensor


def shape_words(shape: str) -> tuple[str, ...]:
    """All training words that draw `shape`: its name first, then its synonyms."""
    return (shape, *SYNONYMS[shape])


def caption(shape_word: str, color: str, fill: str, template: int = 0, by_artist: bool = False) -> str:
    """Formats a caption; the fill is named by its word, or by its artist when `by_artist`."""
    if by_artist:
        return ARTIST_TEMPLATES[template % len(ARTIST_TEMPLATES)].format(
            shape=shape_word, color=color, artist=ARTIST_OF[fill]
        )
    return FILL_TEMPLATES[template % len(FILL_TEMPLATES)].format(shape=shape_word, color=color, fill=fill)


def varied_caption(shape_word: str, i: int) -> str:
    """The i-th of a run of captions of one word that goes through every colour, fill and template (periods 5, 25
    and 7; the seventh template index wraps to the first): the benches' and tests' larger samples."""
    colour, fill = COLOR_NAMES[i % len(COLOR_NAMES)], FILLS[(i // len(COLOR_NAMES)) % len(FILLS)]
    return caption(shape_word, colour, fill, i % 7)


def all_captions() -> list[str]:
    """Every caption the training data can contain (used to pre-encode text once, and by the held-out checks)."""
    out: set[str] = set()
    for shape in SHAPES:
        for word in shape_words(shape):
            for color in COLOR_NAMES:
                for fill in FILLS:
                    out.update(caption(word, color, fill, t) for t in range(len(FILL_TEMPLATES)))
                    out.update(caption(word, color, fill, t, True) for t in range(len(ARTIST_TEMPLATES)))
    return sorted(out)


def _shape_masks(kinds: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Coverage of each shape in its own unit frame; u, v: [N, S, S] local coordinates (radius 1, y up)."""
    au, av = u.abs(), v.abs()
    # Star: five points, outer radius 1, inner radius 0.5; fold the angle into one point's half-sector.
    r = torch.sqrt(u * u + v * v)
    sector = 2 * math.pi / 5
    theta = torch.remainder(torch.atan2(u, v), sector) - sector / 2
    phi = sector / 2 - theta.abs()  # angle from the point's axis
    px, py = r * torch.cos(phi), r * torch.sin(phi)
    inner = 0.5
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    star = (bx - 1.0) * py - by * (px - 1.0) >= 0
    # Heart: the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, fitted to the unit frame.
    hx, hy = u * 1.2, (v + 0.12) * 1.2
    heart = (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 <= 0
    # Hexagon with flat top and bottom.
    hexagon = (av <= 0.82) & (math.sqrt(3.0) * au + av <= math.sqrt(3.0) * 0.95)
    # Crescent: a disk minus an offset disk, opening to the right.
    crescent = (u * u + v * v <= 1.0) & ((u - 0.48) ** 2 + (v - 0.08) ** 2 > 0.78**2)
    # Arrow pointing right: a shaft and a triangular head.
    shaft = (u >= -1.0) & (u <= 0.05) & (av <= 0.28)
    head = (u >= 0.05) & (u <= 1.0) & (av <= (1.0 - u) * 0.84)
    arrow = shaft | head
    masks = torch.stack([star, heart, hexagon, crescent, arrow], dim=1)
    return masks[torch.arange(len(kinds)), kinds]


def _erode(mask: torch.Tensor, width_px: float) -> torch.Tensor:
    """Erodes a supersampled mask [N, 1, S, S] by `width_px` output pixels (a square structuring element)."""
    k = max(1, round(width_px * SUPERSAMPLE))
    grown = F.max_pool2d(1 - mask, (2 * k + 1, 1), stride=1, padding=(k, 0))  # separable: rows, then columns
    return 1 - F.max_pool2d(grown, (1, 2 * k + 1), stride=1, padding=(0, k))


def fill_patterns(size: int = 32) -> torch.Tensor:
    """The supersampled interior patterns [len(FILLS), S, S] (1 = paint), anchored to the image's pixel grid."""
    s = size * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    p = PATTERN_PERIOD
    half = p / 2
    stripes = torch.remainder(gy, p) < half
    checks = (torch.div(gx, half, rounding_mode="floor") + torch.div(gy, half, rounding_mode="floor")) % 2 == 0
    dx, dy = torch.remainder(gx, p) - half, torch.remainder(gy, p) - half
    dots = dx * dx + dy * dy <= 1.15**2
    ones, zeros = torch.ones(s, s), torch.zeros(s, s)
    return torch.stack([ones, zeros, stripes.float(), dots.float(), checks.float()])


def render(
    shapes: torch.Tensor,
    colors: torch.Tensor,
    fills: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    angles: torch.Tensor,
    size: int = 32,
) -> torch.Tensor:
    """Rasterises filled shapes with anti-aliasing (supersampled, then averaged).

    Args:
        shapes: [N] shape indices. colors: [N] colour indices. fills: [N] fill indices. centers: [N, 2] pixel
        centres (x, y). radii: [N] radius in pixels. angles: [N] rotation of the shape in radians (the fill pattern
        stays on the pixel grid). size: output side in pixels.

    Returns:
        [N, 3, size, size] float images in [0, 1].
    """
    s = size * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    dx = gx[None] - centers[:, 0, None, None]
    dy = centers[:, 1, None, None] - gy[None]  # y up
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    r = radii[:, None, None]
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    mask = _shape_masks(shapes, u, v).float()[:, None]
    outline = mask - _erode(mask, OUTLINE_WIDTH)
    border = mask - _erode(mask, BORDER_WIDTH)
    pattern = fill_patterns(size)[fills][:, None]
    patterned = torch.maximum(border, mask * pattern)
    fill_kind = fills[:, None, None, None]
    cover = torch.where(fill_kind == FILLS.index("solid"), mask, patterned)
    cover = torch.where(fill_kind == FILLS.index("outlined"), outline, cover)
    cover = F.avg_pool2d(cover, SUPERSAMPLE)
    palette = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32)
    return cover * palette[colors][:, :, None, None]


def sample_batch(
    n: int,
    seed: int,
    size: int = 32,
    synonym_probability: float = SYNONYM_PROBABILITY,
    artist_probability: float = ARTIST_PROBABILITY,
) -> FillBatch:
    """Draws `n` random samples; identical for the same arguments."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.randint(len(SHAPES), (n,), generator=g)
    colors = torch.randint(len(COLOR_NAMES), (n,), generator=g)
    fills = torch.randint(len(FILLS), (n,), generator=g)
    scale = size / 32.0
    # Narrow ranges of position, size and rotation (wide ones train into blobs at this model size); the shapes are
    # larger than in the first world so the fill patterns have room.
    centers = (16.0 + (torch.rand(n, 2, generator=g) * 2 - 1) * 2.5) * scale
    radii = (10.5 + torch.rand(n, generator=g) * 2.0) * scale
    angles = (torch.rand(n, generator=g) * 2 - 1) * math.radians(8.0)
    images = render(shapes, colors, fills, centers, radii, angles, size)
    use_syn = torch.rand(n, generator=g) < synonym_probability
    syn_pick = torch.randint(2, (n,), generator=g)
    by_artist = torch.rand(n, generator=g) < artist_probability
    templates = torch.randint(len(FILL_TEMPLATES) * len(ARTIST_TEMPLATES), (n,), generator=g)
    captions = []
    for i in range(n):
        shape = SHAPES[int(shapes[i])]
        word = SYNONYMS[shape][int(syn_pick[i])] if bool(use_syn[i]) else shape
        captions.append(
            caption(word, COLOR_NAMES[int(colors[i])], FILLS[int(fills[i])], int(templates[i]), bool(by_artist[i]))
        )
    return FillBatch(images, shapes, colors, fills, by_artist, captions, centers)


def sample_distractors(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Images that show none of the shapes: blank, faint noise, irregular blotches, or patterned blotches.

    The judge learns a "none" shape class from these, so an erased sample that draws nothing recognisable (or only
    a texture) is not forced into one of the shape classes.
    """
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(4, (n,), generator=g)
    low = torch.randn(n, 1, 4, 4, generator=g)
    blotch = (F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False) > 0.9).float()
    tint = torch.rand(n, 3, 1, 1, generator=g)
    pattern_pick = torch.randint(2, len(FILLS), (n,), generator=g)
    patterns = F.avg_pool2d(fill_patterns(size)[pattern_pick][:, None], SUPERSAMPLE)
    noise = torch.rand(n, 3, size, size, generator=g) * 0.15
    images = torch.zeros(n, 3, size, size)
    images[kind == 1] = noise[kind == 1]
    images[kind == 2] = (blotch * tint)[kind == 2]
    images[kind == 3] = (blotch * patterns * tint)[kind == 3]
    return images
