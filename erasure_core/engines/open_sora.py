"""The Open-Sora engine: clips over an `OpenSoraPipeline`, with the video parameters a request may set.

ICE and the other closed-form methods only need the family's `encode` and text layers, which the Open-Sora family
declares, so `erase` / `attach` / `activate` are the shared engine's. The model is always conditioned with the
family's prompt suffix (" 24 FPS. 4 motion score."), the one erasures are computed on; the `fps` a caller asks for
is the playback rate of the encoded clip, not a conditioning input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasure_core.engines.base import ErasureEngine, GenerationParams, Output, check_seeds


@dataclass(frozen=True)
class VideoParams(GenerationParams):
    """Generation parameters of one clip. None: the model's own default (guidance 7.5, native frame count)."""

    guidance_scale: float | None = None
    num_frames: int | None = None
    negative_prompt: str = ""


class OpenSoraEngine(ErasureEngine):
    """An `ErasureEngine` over an `OpenSoraPipeline`; generation makes one clip per (prompt, seed)."""

    output: ClassVar[Output] = "video"

    @property
    def packing(self) -> int:
        """Frame sides must be multiples of this: the VAE's spatial ratio times the transformer's patch size."""
        return int(self.pipe.vae_scale_factor_spatial) * int(self.pipe.patch_size)

    @property
    def temporal_ratio(self) -> int:
        """Frame counts must be 1 + a multiple of this (the causal VAE's temporal compression)."""
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def native_num_frames(self) -> int:
        return int(self.pipe.native_num_frames)

    @torch.no_grad()
    def generate_active(
        self, prompts: Sequence[str], seeds: Sequence[int], params: GenerationParams | None = None
    ) -> torch.Tensor:
        """Clips [N, F, 3, H, W] in [0, 1] (float32, CPU) with the active set.

        Each clip runs alone from its own CPU generator, so its frames depend only on its prompt, seed, parameters
        and the active erasures. Plain `GenerationParams` (the warm-up) get the model's native frame count.
        """
        check_seeds(prompts, seeds)
        params = params or VideoParams()
        video = params if isinstance(params, VideoParams) else VideoParams(**_shared_fields(params))
        clips = [
            generate_video(
                self.pipe,
                prompt,
                seed=int(seed),
                num_frames=video.num_frames,
                height=video.height,
                width=video.width,
                steps=video.steps,
                guidance_scale=video.guidance_scale,
                negative_prompt=video.negative_prompt,
                max_sequence_length=video.max_sequence_length,
            )
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        return torch.stack(clips)


def generate_video(
    pipe: Any,
    prompt: str,
    seed: int = 0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    fps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    **kwargs: Any,
) -> torch.Tensor:
    """Generates one clip and returns its frames [F, 3, H, W] in [0, 1] (float32, CPU).

    Unset arguments take the loaded model's defaults: `num_frames` = `pipe.native_num_frames`, (`height`, `width`) =
    `pipe.native_size`; `steps` and `guidance_scale` are the pipeline's own defaults when None, and `fps` (the
    " {fps} FPS." prompt suffix the model was trained with) is the pipeline's default. Extra keyword arguments go to
    the pipeline call (e.g. `motion_score`, `text_oscillation`).
    """
    native_h, native_w = pipe.native_size
    call: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_frames": num_frames or pipe.native_num_frames,
        "height": height or native_h,
        "width": width or native_w,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "pt",
        **kwargs,
    }
    if steps is not None:
        call["num_inference_steps"] = steps
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    if fps is not None:
        call["fps"] = fps
    frames = pipe(**call).frames
    return frames[0].float().cpu().clamp(0, 1)


def _shared_fields(params: GenerationParams) -> dict[str, Any]:
    """An image-shaped request's fields, minus guidance (an image default means nothing to the video model)."""
    return {
        "steps": params.steps,
        "height": params.height,
        "width": params.width,
        "max_sequence_length": params.max_sequence_length,
    }
