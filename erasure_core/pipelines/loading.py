"""Loading pipelines: the demo worlds and real checkpoints through the same code path.

`load_flux_pipeline("demo")` assembles the bundled demo world and loads it with `FluxPipeline.from_pretrained`,
exactly as a real FLUX.1 folder or hub id is loaded. Downloads are off unless the caller allows them, so a missing
checkpoint fails fast with a clear message instead of reaching for the network.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from erasure_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

DEMO = "demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class LoadedPipeline:
    """A loaded pipeline with the identity of what it was loaded from."""

    pipe: Any
    family: str
    source: str
    model_id: str


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ModelLoadError(f"invalid device {name!r}") from e


def resolve_flux_source(model: str, cache_dir: Path | None = None) -> str:
    """Maps "demo" to the assembled demo folder; checks that a path exists or that the string is a hub id."""
    if model == DEMO:
        from erasure_core.worlds.flux_world import assemble_flux_world

        return str(assemble_flux_world(cache_dir))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path.resolve())
    if _HUB_ID.match(model):
        return model
    raise ModelLoadError(f"model {model!r} is neither 'demo', an existing folder, nor a hub id like 'org/name'")


def load_flux_pipeline(
    model: str = DEMO,
    device: str = "auto",
    dtype: str = "float32",
    allow_downloads: bool = False,
    cache_dir: Path | None = None,
) -> LoadedPipeline:
    """Loads a Flux pipeline (any diffusers Flux folder or hub id, or the demo world).

    Text encoders need not be T5/CLIP: the demo world's are BERT, and `from_pretrained` loads whatever classes
    `model_index.json` names.

    Raises:
        ModelLoadError: the source is invalid, missing locally with downloads off, or fails to load.
    """
    from diffusers import FluxPipeline

    source = resolve_flux_source(model, cache_dir)
    try:
        pipe = FluxPipeline.from_pretrained(
            source, torch_dtype=resolve_dtype(dtype), local_files_only=not allow_downloads
        )
    except ModelLoadError:
        raise
    except Exception as e:
        hint = "" if allow_downloads else " (downloads are off: set ERASURE_ALLOW_DOWNLOADS=1 to fetch from a hub)"
        raise ModelLoadError(f"could not load Flux pipeline from {model!r}: {e}{hint}") from e
    pipe.to(resolve_device(device))
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        component.eval()
        component.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, family="flux", source=source, model_id=model)
