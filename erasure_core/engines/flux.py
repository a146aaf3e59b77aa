"""The Flux engine: seeded image generation over a `FluxPipeline`, defaults read from the model itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from erasure_core.engines.base import ErasureEngine, GenerationParams, Output, check_seeds
from erasure_core.families.flux import default_max_sequence_length, native_size


class FluxEngine(ErasureEngine):
    """An `ErasureEngine` over a `FluxPipeline` (FLUX.1-dev / -schnell, the Flux-format demo worlds)."""

    output: ClassVar[Output] = "image"

    @property
    def packing(self) -> int:
        """Image sides must be multiples of this: the VAE's downsampling, then Flux's 2x2 latent packing."""
        return int(self.pipe.vae_scale_factor) * 2

    def generate_active(
        self, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None
    ) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] on CPU, one per (prompt, seed), with the active set."""
        return generate_images(self.pipe, prompts, seeds, params)


@torch.no_grad()
def generate_images(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None
) -> torch.Tensor:
    """Generates one image per (prompt, seed); returns float images [N, 3, H, W] in [0, 1] on CPU.

    Each image's starting noise comes from its own CPU generator, so an image depends only on its prompt, seed,
    parameters and the active erasures — not on the batch it ran in or the device.
    """
    check_seeds(prompts, seeds)
    params = params or GenerationParams()
    height, width = native_size(pipe)
    call: dict[str, Any] = {
        "prompt": list(prompts),
        "height": params.height or height,
        "width": params.width or width,
        "num_inference_steps": params.steps,
        "max_sequence_length": params.max_sequence_length or default_max_sequence_length(pipe),
        "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
        "output_type": "pt",
    }
    if params.guidance_scale is not None:
        call["guidance_scale"] = params.guidance_scale
    return pipe(**call).images.float().cpu().clamp(0, 1)
