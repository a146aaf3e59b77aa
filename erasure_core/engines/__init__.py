"""Engines: a loaded pipeline, its erasures and generation. One module per model output (Flux images, Open-Sora
clips) over the shared `ErasureEngine`; `erasure_core.models` says which model uses which."""

from erasure_core.engines.base import ErasureEngine, GenerationParams
from erasure_core.engines.flux import FluxEngine
from erasure_core.engines.open_sora import OpenSoraEngine, VideoParams

__all__ = ["ErasureEngine", "FluxEngine", "GenerationParams", "OpenSoraEngine", "VideoParams"]
