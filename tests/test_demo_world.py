"""The Flux-format demo world is real: it loads like any Flux checkpoint and draws what it is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from erasure_core.errors import ModelLoadError
from erasure_core.pipelines.loading import load_flux_pipeline
from erasure_core.worlds.evaluation import build_samples, engine_generator, judge_samples
from erasure_core.worlds.judge import NONE_CLASS, judge_images
from erasure_core.worlds.shapes import SHAPES, SYNONYMS, sample_batch, sample_distractors


def test_shapes_data_is_deterministic() -> None:
    a, b = sample_batch(16, seed=3), sample_batch(16, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, sample_batch(16, seed=4).images)


def test_judge_sees_renders_and_rejects_distractors(judge) -> None:
    batch = sample_batch(300, seed=424242)
    verdict = judge_images(batch.images, judge)
    assert (verdict.shapes == batch.shapes).float().mean() >= 0.95
    assert (verdict.colors == batch.colors).float().mean() >= 0.98
    assert (judge_images(sample_distractors(100, seed=9), judge).shapes == NONE_CLASS).float().mean() >= 0.9


def test_assembled_folder_loads_with_flux_pipeline_offline(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import FluxPipeline
    from transformers import BertModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = FluxPipeline.from_pretrained(str(demo_dir), local_files_only=True)
    assert isinstance(pipe.text_encoder, BertModel) and isinstance(pipe.text_encoder_2, BertModel)
    assert pipe.tokenizer_2.model_max_length == 24
    image = pipe(
        "a red circle",
        height=32,
        width=32,
        num_inference_steps=4,
        max_sequence_length=24,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert image.shape == (1, 3, 32, 32)


def test_demo_world_draws_what_it_is_asked_for(demo_engine, judge) -> None:
    report = judge_samples(engine_generator(demo_engine), build_samples(seeds_per_prompt=2), judge)
    figures = {
        "shape": report.shape_accuracy,
        "color": report.color_accuracy,
        "synonyms": {w: report.word_rate[w] for s in SHAPES for w in SYNONYMS[s]},
    }
    print("demo-world judged figures:", figures)
    assert report.mean_shape_accuracy >= 0.80, figures
    assert report.mean_color_accuracy >= 0.80, figures
    synonyms = [w for s in SHAPES for w in SYNONYMS[s]]
    assert report.rate_of(synonyms) >= 0.60, figures


def test_loader_rejects_bad_sources_without_network(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither"):
        load_flux_pipeline("not a model!")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_flux_pipeline(str(tmp_path))
    with pytest.raises(ModelLoadError, match="downloads are off"):
        load_flux_pipeline("black-forest-labs/FLUX.1-schnell")


def test_cli_generate_writes_a_png(tmp_path: Path, demo_dir: Path) -> None:
    out = tmp_path / "a.png"
    env = dict(os.environ, ERASURE_CACHE_DIR=str(demo_dir.parent))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "erasure_core.cli",
            "generate",
            "--prompt",
            "a blue square",
            "--seed",
            "1",
            "--steps",
            "8",
            "-o",
            str(out),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    from PIL import Image

    assert Image.open(out).size == (32, 32)
