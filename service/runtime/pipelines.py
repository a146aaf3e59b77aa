"""The loaded pipelines, one per served model, with the call defaults read from each model.

Models are pluggable: `register_loader(name, loader)` adds a family without touching the rest of the service
("open-sora" is registered here and loads only when `ERASURE_OPEN_SORA_MODEL` is set). A model whose source is
configured but that has no loader fails loudly at startup (the service never reports ready), instead of silently
serving without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from erasure_core.errors import ModelLoadError
from service.errors import ModelNotAvailableError
from service.settings import Settings

logger = logging.getLogger(__name__)

MODEL_NAMES = ("flux", "open-sora")

EngineLoader = Callable[[str, Settings], Any]


def _load_flux(source: str, settings: Settings) -> Any:
    from erasure_core.engine import ErasureEngine

    return ErasureEngine.load(
        source,
        device=settings.device,
        dtype=settings.dtype,
        allow_downloads=settings.allow_downloads,
        cache_dir=settings.cache_dir,
    )


def _load_open_sora(source: str, settings: Settings) -> Any:
    from service.runtime.open_sora import load_open_sora

    return load_open_sora(source, settings)


LOADERS: dict[str, EngineLoader] = {"flux": _load_flux, "open-sora": _load_open_sora}


def register_loader(model: str, loader: EngineLoader) -> None:
    """Registers (or replaces) how to load one model family's engine."""
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; expected one of {MODEL_NAMES}")
    LOADERS[model] = loader


@dataclass(frozen=True)
class ModelDefaults:
    """Call defaults and limits of one loaded model, read from the pipeline unless overridden in the settings.

    Attributes:
        width, height: the default image size (the model's native size).
        max_sequence_length: the text length the model samples with (second tokenizer's `model_max_length`, <= 512).
        packing: image sides must be multiples of this (`vae_scale_factor * 2`: VAE downsampling, then 2x2 packing;
            for video models the engine's `packing`: spatial ratio times patch size).
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


def read_defaults(engine: Any, settings: Settings, model: str) -> ModelDefaults:
    pipe = engine.pipe
    overrides = settings.model_overrides(model)
    height, width = engine.family.native_size(pipe)
    if overrides.default_size is not None:
        width, height = overrides.default_size
    length = overrides.max_sequence_length or engine.family.default_max_sequence_length(pipe)
    temporal_ratio = getattr(engine, "temporal_ratio", None)
    if temporal_ratio is None:
        return ModelDefaults(
            width=width, height=height, max_sequence_length=length, packing=int(pipe.vae_scale_factor) * 2
        )
    return ModelDefaults(
        width=width,
        height=height,
        max_sequence_length=length,
        packing=int(engine.packing),
        num_frames=int(engine.native_num_frames),
        temporal_ratio=int(temporal_ratio),
    )


@dataclass
class PipelineHandle:
    """One served model: its engine, its defaults, and the lock that serialises use of the shared pipeline.

    `lock` is held for every change of the pipeline's adapter state (attach, detach, activate) together with the
    generation that relies on it; `erase_lock` serialises erasure computations (they share the engine's caches).
    """

    name: str
    engine: Any
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
            loader = LOADERS.get(model)
            if loader is None:
                raise ModelLoadError(f"{model} is configured ({source!r}) but this build has no loader for it")
            logger.info("loading %s from %r", model, source)
            engine = loader(source, settings)
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
