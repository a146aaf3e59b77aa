"""The models this library serves, declared once: name, family, engine (image or video), loader, demo world.

Everything that needs to know which models exist reads this table: the engines are built from it, the command line
loads through it, and the service derives the model names it accepts and how it loads each one from it. Adding a
model is one row here plus its family (`erasure_core/families/`) and, if it is a new kind of output, its engine
(`erasure_core/engines/`).

Example:
    >>> from erasure_core.models import load_engine
    >>> engine = load_engine("flux")                      # the bundled Flux demo world
    >>> video = load_engine("open-sora", "/models/os2")   # an OpenSoraPipeline folder
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erasure_core.engines import ErasureEngine, FluxEngine, OpenSoraEngine
from erasure_core.engines.base import Output
from erasure_core.errors import ModelLoadError
from erasure_core.expansion import LLMEndpoint
from erasure_core.families import get_family
from erasure_core.pipelines.loading import LoadedPipeline, load_flux_pipeline, load_open_sora_pipeline
from erasure_core.worlds.flux_world import assemble_flux_world, world_preserve_corpus
from erasure_core.worlds.video_world import assemble_video_world

DEMO = "demo"


@dataclass(frozen=True)
class ModelSpec:
    """One servable model.

    Attributes:
        name: the public name ("flux", "open-sora"): API field, settings prefix, record field.
        family: its family in `erasure_core.families` (layers, targets, prompt encoding, training ops).
        engine: the engine class (its `output` says image or video).
        load: loads a diffusers folder or hub id into a `LoadedPipeline` of this family.
        demo_world: assembles the bundled demo world's folder (under a cache folder) for the source "demo".
        demo_corpus: the demo world's typical prompts, preserved by erasures made on it.
    """

    name: str
    family: str
    engine: type[ErasureEngine]
    load: Callable[..., LoadedPipeline]
    demo_world: Callable[[Path | None], Path]
    demo_corpus: Callable[[], list[str]] = list

    @property
    def output(self) -> Output:
        return self.engine.output


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("flux", "flux", FluxEngine, load_flux_pipeline, assemble_flux_world, world_preserve_corpus),
        ModelSpec("open-sora", "open-sora", OpenSoraEngine, load_open_sora_pipeline, assemble_video_world),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelLoadError(f"unknown model {name!r}; expected one of {list(MODEL_NAMES)}") from None


def load_pipeline(model: str, source: str = DEMO, cache_dir: Path | None = None, **kwargs: Any) -> LoadedPipeline:
    """Loads `source` — "demo" (the model's bundled world), a diffusers folder or a hub id — as `model`.

    Keyword arguments go to the loader: `device`, `dtype`, `allow_downloads`, `options` (a `LoadOptions`: offload,
    VAE tiling/slicing, quantization). The family's text-conditioning layers are kept exact and resident (`keep`):
    closed-form methods and the guard read their base weights, and the layer hash covers them.

    Raises:
        ModelLoadError: unknown model, a missing demo world, or a source that is invalid or fails to load.
    """
    spec = get_model(model)
    kwargs.setdefault("keep", get_family(spec.family).edited_layers)
    if source != DEMO:
        return spec.load(source, **kwargs)
    try:
        folder = spec.demo_world(cache_dir)
    except FileNotFoundError as e:
        raise ModelLoadError(f"the {model} demo world is not available: {e}") from e
    return spec.load(str(folder), model_id=DEMO, preserve_corpus=tuple(spec.demo_corpus()), **kwargs)


def load_engine(
    model: str = "flux",
    source: str = DEMO,
    llm: LLMEndpoint | None = None,
    cache_dir: Path | None = None,
    **kwargs: Any,
) -> ErasureEngine:
    """Loads `source` as `model` (see `load_pipeline`) and wraps it in the model's engine; `cache_dir` holds the demo
    worlds and the engine's on-disk caches (the lexicon's reading index)."""
    loaded = load_pipeline(model, source, cache_dir=cache_dir, **kwargs)
    return get_model(model).engine(loaded, llm=llm, cache_dir=cache_dir)
