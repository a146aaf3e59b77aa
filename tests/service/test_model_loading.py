"""Models load from safetensors only: a pickled `.bin` checkpoint (which can run code when unpickled) is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erasure_core.errors import ModelLoadError
from service.pipelines import PipelinePool
from service.settings import Settings


def test_a_component_without_safetensors_is_refused(demo_dir: Path, tmp_path: Path) -> None:
    """The demo world's folder with its transformer converted to `diffusion_pytorch_model.bin`: the service refuses
    to load it (ModelLoadError) instead of unpickling it."""
    folder = tmp_path / "bin-world"
    shutil.copytree(demo_dir, folder, symlinks=True)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    settings = Settings(flux_model=str(folder), device="cpu", auth="off")
    with pytest.raises(ModelLoadError, match="safetensors"):
        PipelinePool.load(settings, models=["flux"])
