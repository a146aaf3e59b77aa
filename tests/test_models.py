"""The model table: each model loads through `load_engine` into its family's engine, and the Python API alone (no
service) erases and generates video as well as images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from erasure_core.concepts import ConceptSpec
from erasure_core.engines import FluxEngine, OpenSoraEngine, VideoParams
from erasure_core.errors import ModelLoadError
from erasure_core.models import MODELS, get_model, load_engine


def test_each_model_declares_a_family_and_an_output() -> None:
    assert {name: spec.output for name, spec in MODELS.items()} == {"flux": "image", "open-sora": "video"}
    with pytest.raises(ModelLoadError, match="unknown model"):
        get_model("sdxl")


def test_the_flux_engine_carries_the_demo_corpus(demo_engine: FluxEngine) -> None:
    assert demo_engine.family.name == get_model("flux").family
    assert demo_engine.loaded.model_id == "demo" and demo_engine.loaded.preserve_corpus
    assert set(demo_engine.loaded.preserve_corpus) <= set(demo_engine.context.preserve_corpus)


def test_python_api_erases_and_generates_video(cache_dir: Path) -> None:
    engine = load_engine("open-sora", device="cpu", cache_dir=cache_dir)
    assert isinstance(engine, OpenSoraEngine) and engine.family.name == get_model("open-sora").family
    square = engine.erase(ConceptSpec(concept="square"))
    engine.attach("square", square)
    params = VideoParams(steps=6)
    plain = engine.generate(["a red square"], [3], params)
    erased = engine.generate(["a red square"], [3], params, erasures=["square"])
    again = engine.generate(["a red square"], [3], params)
    assert plain.shape == (1, engine.native_num_frames, 3, *engine.native_size)
    assert not torch.equal(plain, erased), "the erasure must change the clip of its concept"
    assert torch.equal(plain, again), "generating without the erasure restores the base model exactly"
