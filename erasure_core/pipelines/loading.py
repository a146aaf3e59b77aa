"""Loading pipelines of every family from a diffusers folder or a hub id, through one code path.

`load_flux_pipeline(source)` and `load_open_sora_pipeline(source)` load with `from_pretrained` on the configured
device and dtype, eval mode, no gradients, from safetensors only (`use_safetensors=True`: a pickled `.bin`
checkpoint, which can run code when unpickled, is refused). Downloads are off unless the caller allows them, so a
missing checkpoint fails fast with a clear message instead of reaching for the network. The bundled demo worlds are
not known here: `erasure_core.models` assembles a world's folder and hands it to these loaders like any other folder.
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
    """A loaded pipeline with the identity of what it was loaded from.

    Attributes:
        pipe: the diffusers pipeline. family: its family's name (see `erasure_core.families`).
        source: the folder or hub id it was loaded from. model_id: what the caller named (e.g. "demo").
        preserve_corpus: typical prompts of the model's world when its source ships them (the demo worlds do),
            added to the everyday prompts that erasure methods preserve.
    """

    pipe: Any
    family: str
    source: str
    model_id: str
    preserve_corpus: tuple[str, ...] = ()


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


def resolve_source(model: str) -> str:
    """Checks that `model` is a diffusers pipeline folder or a hub id; returns the absolute folder or the id."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path.resolve())
    if _HUB_ID.match(model):
        return model
    raise ModelLoadError(f"model {model!r} is neither an existing folder nor a hub id like 'org/name'")


def load_pipeline(
    pipeline_cls: Any,
    family: str,
    model: str,
    device: str = "auto",
    dtype: str = "float32",
    allow_downloads: bool = False,
    model_id: str | None = None,
    preserve_corpus: tuple[str, ...] = (),
) -> LoadedPipeline:
    """Loads `pipeline_cls.from_pretrained(model)` frozen on `device`; the shared body of the family loaders.

    Raises:
        ModelLoadError: the source is invalid, missing locally with downloads off, has a component without
            safetensors weights, or fails to load.
    """
    source = resolve_source(model)
    try:
        pipe = pipeline_cls.from_pretrained(
            source, torch_dtype=resolve_dtype(dtype), local_files_only=not allow_downloads, use_safetensors=True
        )
    except Exception as e:
        hint = "" if allow_downloads else " (downloads are off: set ERASURE_ALLOW_DOWNLOADS=1 to fetch from a hub)"
        raise ModelLoadError(f"could not load {pipeline_cls.__name__} from {model!r}: {e}{hint}") from e
    pipe.to(resolve_device(device))
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        component.eval()
        component.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, family, source, model_id or model, preserve_corpus)


def load_flux_pipeline(model: str, **kwargs: Any) -> LoadedPipeline:
    """Loads any diffusers Flux folder or hub id. Text encoders need not be T5/CLIP: the demo world's are BERT, and
    `from_pretrained` loads whatever classes `model_index.json` names."""
    from diffusers import FluxPipeline

    return load_pipeline(FluxPipeline, "flux", model, **kwargs)


def load_open_sora_pipeline(model: str, **kwargs: Any) -> LoadedPipeline:
    """Loads an `OpenSoraPipeline` folder (this project's diffusers layout of Open-Sora 2.0) or hub id."""
    from erasure_core.pipelines.open_sora import OpenSoraPipeline

    return load_pipeline(OpenSoraPipeline, "open-sora", model, **kwargs)
