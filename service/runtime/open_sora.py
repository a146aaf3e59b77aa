"""Open-Sora in the service: the loader registered under "open-sora" and its `ErasureEngine`-compatible engine.

`OpenSoraEngine` is an `ErasureEngine` (same `AdapterHost`, `attach` / `activate` / `detach` and `erase`: ICE only
needs the family's `encode` and text layers, which the Open-Sora family declares), whose `generate` returns clips
[N, F, 3, H, W] instead of images, so the adapter manager and the scheduler drive it exactly like the Flux engine.

The model is always conditioned with the family's prompt suffix (" 24 FPS. 4 motion score."), the one erasures are
computed on; the `fps` a caller asks for is the playback rate of the encoded clip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from erasure_core.engine import ErasureEngine
from erasure_core.errors import ModelLoadError
from erasure_core.generation import GenerationParams
from erasure_core.pipelines.loading import DEMO, LoadedPipeline, resolve_device, resolve_dtype
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoParams(GenerationParams):
    """Generation parameters of one clip. `guidance_scale` None: the pipeline's own default (7.5)."""

    guidance_scale: float | None = None  # type: ignore[assignment]
    num_frames: int | None = None


class OpenSoraEngine(ErasureEngine):
    """An `ErasureEngine` over an `OpenSoraPipeline`; `generate` makes one clip per (prompt, seed)."""

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
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        erasures: Sequence[str] = (),
    ) -> torch.Tensor:
        """Generates with exactly `erasures` active; clips [N, F, 3, H, W] in [0, 1] (float32, CPU).

        Each clip runs alone from its own CPU generator, so its frames depend only on its prompt, seed, parameters
        and the active erasures. A plain `GenerationParams` (the warm-up) gets the model's native frame count.
        """
        from erasure_core.video import generate_video

        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; expected one seed per prompt")
        params = params or VideoParams()
        num_frames = params.num_frames if isinstance(params, VideoParams) else None
        guidance = params.guidance_scale if isinstance(params, VideoParams) else None
        self.host.activate(erasures)
        clips = [
            generate_video(
                self.pipe,
                prompt,
                seed=int(seed),
                num_frames=num_frames,
                height=params.height,
                width=params.width,
                steps=params.steps,
                guidance_scale=guidance,
                max_sequence_length=params.max_sequence_length,
            )
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        return torch.stack(clips)


def resolve_open_sora_source(model: str, cache_dir: Path | None) -> str:
    """Maps "demo" to the assembled video demo world; otherwise the source must be a diffusers folder."""
    if model == DEMO:
        from erasure_core.worlds.video_world import assemble_video_world

        try:
            return str(assemble_video_world(cache_dir))
        except FileNotFoundError as e:
            raise ModelLoadError(f"the Open-Sora demo world is not available: {e}") from e
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path.resolve())
    return model  # a hub id: from_pretrained decides (and refuses when downloads are off)


def load_open_sora(source: str, settings: Settings) -> OpenSoraEngine:
    """The "open-sora" loader: `OpenSoraPipeline.from_pretrained` on the demo world or a folder, on the configured
    device and dtype, wrapped in an `OpenSoraEngine`.

    Raises:
        ModelLoadError: the source is missing or invalid, or fails to load.
    """
    from erasure_core.pipelines.open_sora import OpenSoraPipeline

    path = resolve_open_sora_source(source, settings.cache_dir)
    try:
        pipe = OpenSoraPipeline.from_pretrained(
            path, torch_dtype=resolve_dtype(settings.dtype), local_files_only=not settings.allow_downloads
        )
    except ModelLoadError:
        raise
    except Exception as e:
        hint = "" if settings.allow_downloads else " (downloads are off: set ERASURE_ALLOW_DOWNLOADS=1 to fetch)"
        raise ModelLoadError(f"could not load Open-Sora pipeline from {source!r}: {e}{hint}") from e
    pipe.to(resolve_device(settings.device))
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        component.eval()
        component.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return OpenSoraEngine(LoadedPipeline(pipe=pipe, family="open_sora", source=path, model_id=source))
