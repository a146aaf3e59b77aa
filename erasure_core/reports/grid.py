"""The before/after grid of a report: rows = prompts, columns = seeds, each cell "without | with" the erasure."""

from __future__ import annotations

import torch

from erasure_core.media import to_png_bytes

GAP = 2  # pixels between cells (and around pairs), in the background colour
PAIR_GAP = 6  # between one seed's pair and the next


def grid_size(rows: int, seeds: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels of a grid of `rows` prompts x `seeds` seeds of (without | with) cells."""
    pair = 2 * width + GAP
    return rows * height + (rows + 1) * GAP, seeds * pair + (seeds - 1) * PAIR_GAP + 2 * GAP


def render_grid(base: torch.Tensor, erased: torch.Tensor, seeds: int) -> torch.Tensor:
    """`base` / `erased`: [rows * seeds, 3, H, W] in [0, 1], row-major (each prompt's seeds in order) -> [3, H', W']."""
    n, _, h, w = base.shape
    rows = n // seeds
    height, width = grid_size(rows, seeds, h, w)
    canvas = torch.full((3, height, width), 0.12)
    for r in range(rows):
        top = GAP + r * (h + GAP)
        for s in range(seeds):
            left = GAP + s * (2 * w + GAP + PAIR_GAP)
            canvas[:, top : top + h, left : left + w] = base[r * seeds + s]
            canvas[:, top : top + h, left + w + GAP : left + 2 * w + GAP] = erased[r * seeds + s]
    return canvas


def grid_png(base: torch.Tensor, erased: torch.Tensor, seeds: int) -> bytes:
    return to_png_bytes(render_grid(base.float().clamp(0, 1), erased.float().clamp(0, 1), seeds))
