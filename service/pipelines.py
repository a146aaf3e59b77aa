"""The loaded pipelines, one per served model, with the call defaults read from each model.

Which models exist, how each loads and whether it makes images or video come from the core's model table
(`erasure_core.models`); this module only decides which of them this deployment serves (those whose source is
configured: `ERASURE_FLUX_MODEL`, `ERASURE_OPEN_SORA_MODEL`) and reads their defaults once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from erasure_core.engines import ErasureEngine, OpenSoraEngine
from erasure_core.models import MODEL_NAMES, load_engine
from erasure_core.pipelines.loading import LoadOptions
from service.errors import ModelNotAvailableError
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDefaults:
    """Call defaults and limits of one loaded model, read from the engine unless overridden in the settings.

    Attributes:
        width, height: the default image size (the model's native size).
        max_sequence_length: the text length the model samples with (second tokenizer's `model_max_length`, <= 512).
        packing: image (frame) sides must be multiples of this (the engine's `packing`).
        num_frames: video models only (None for image models): the native frame count.
        temporal_ratio: video models only: frame counts must be 1 + a multiple of this (the VAE's temporal ratio).
    """

    width: int
    height: int
    max_sequence_length: int
    packing: int
    num_frames: int | None = None
    temporal_ratio: int | None = None

    @property
    def is_video(self) -> bool:
        return self.num_frames is not None


def read_defaults(engine: ErasureEngine, settings: Settings, model: str) -> ModelDefaults:
    overrides = settings.model_overrides(model)
    height, width = engine.native_size
    if overrides.default_size is not None:
        width, height = overrides.default_size
    length = overrides.max_sequence_length or engine.max_sequence_length
    defaults = ModelDefaults(width=width, height=height, max_sequence_length=length, packing=engine.packing)
    if isinstance(engine, OpenSoraEngine):
        return ModelDefaults(
            **{**defaults.__dict__, "num_frames": engine.native_num_frames, "temporal_ratio": engine.temporal_ratio}
        )
    return defaults


def load_options(settings: Settings) -> LoadOptions:
    """The memory options every served model is loaded with (`ERASURE_OFFLOAD`, `ERASURE_VAE_*`, `ERASURE_QUANTIZE`)."""
    return LoadOptions(
        offload=settings.offload,
        vae_tiling=settings.vae_tiling,
        vae_slicing=settings.vae_slicing,
        quantize=settings.quantize,
    )


@dataclass
class PipelineHandle:
    """One served model: its engine, its defaults, and the lock that serialises use of the shared pipeline.

    `lock` is held for every change of the pipeline's adapter state (attach, detach, activate) together with the
    generation that relies on it; `erase_lock` serialises erasure computations (they share the engine's caches).
    """

    name: str
    engine: ErasureEngine
    defaults: ModelDefaults
    lock: threading.Lock = field(default_factory=threading.Lock)
    erase_lock: threading.Lock = field(default_factory=threading.Lock)


class PipelinePool:
    """The loaded models by name ("flux", "open-sora")."""

    def __init__(self, handles: dict[str, PipelineHandle] | None = None) -> None:
        self.handles = dict(handles or {})

    @classmethod
    def load(cls, settings: Settings, models: Sequence[str] = MODEL_NAMES) -> PipelinePool:
        """Loads every configured model (of `models`). Raises ModelLoadError when one cannot be loaded."""
        handles = {}
        for model in models:
            source = settings.model_overrides(model).source
            if not source:
                continue
            logger.info("loading %s from %r", model, source)
            engine = load_engine(
                model,
                source,
                device=settings.device,
                dtype=settings.dtype,
                allow_downloads=settings.allow_downloads,
                options=load_options(settings),
                cache_dir=settings.cache_dir,
                llm=settings.llm_endpoint(),
            )
            handles[model] = PipelineHandle(model, engine, read_defaults(engine, settings, model))
            logger.info("loaded %s: %s", model, handles[model].defaults)
        return cls(handles)

    @property
    def names(self) -> list[str]:
        return list(self.handles)

    def get(self, model: str) -> PipelineHandle:
        handle = self.handles.get(model)
        if handle is None:
            served = ", ".join(self.handles) or "none"
            raise ModelNotAvailableError(f"model {model!r} is not served by this deployment (served: {served})")
        return handle
