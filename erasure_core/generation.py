"""Seeded image generation with a loaded Flux pipeline, with defaults read from the model itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from erasure_core.families.flux import default_max_sequence_length, native_size


@dataclass(frozen=True)
class GenerationParams:
    steps: int = 20
    guidance_scale: float = 3.5
    height: int | None = None
    width: int | None = None
    max_sequence_length: int | None = None


@torch.no_grad()
def generate_images(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None
) -> torch.Tensor:
    """Generates one image per (prompt, seed); returns float images [N, 3, H, W] in [0, 1] on CPU.

    Each image's starting noise comes from its own CPU generator, so an image depends only on its prompt, seed,
    parameters and the active erasures — not on the batch it ran in or the device.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; expected one seed per prompt")
    params = params or GenerationParams()
    height, width = native_size(pipe)
    out = pipe(
        prompt=list(prompts),
        height=params.height or height,
        width=params.width or width,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        max_sequence_length=params.max_sequence_length or default_max_sequence_length(pipe),
        generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
        output_type="pt",
    )
    return out.images.float().cpu().clamp(0, 1)


def generate_batched(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None, batch: int = 64
) -> torch.Tensor:
    """`generate_images` in chunks of `batch` (bounded memory for evaluation sweeps)."""
    chunks = [
        generate_images(pipe, prompts[i : i + batch], seeds[i : i + batch], params)
        for i in range(0, len(prompts), batch)
    ]
    return torch.cat(chunks)


def to_png_bytes(image: torch.Tensor) -> bytes:
    """Encodes one image [3, H, W] in [0, 1] as PNG."""
    import io

    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
