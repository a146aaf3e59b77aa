"""Loading pipelines of every family from a diffusers folder or a hub id, through one code path.

`load_flux_pipeline(source)` and `load_open_sora_pipeline(source)` load with `from_pretrained` on the configured
device and dtype, eval mode, no gradients, from safetensors only (`use_safetensors=True`: a pickled `.bin`
checkpoint, which can run code when unpickled, is refused). Downloads are off unless the caller allows them, so a
missing checkpoint fails fast with a clear message instead of reaching for the network. The bundled demo worlds are
not known here: `erasure_core.models` assembles a world's folder and hands it to these loaders like any other folder.

Real-model memory options (`LoadOptions`): dtype `auto` (bfloat16 on CUDA, float32 on CPU), CPU offload through
accelerate (`model`: one component on the accelerator at a time; `sequential`: one layer at a time), VAE tiling and
slicing, and an int8 weight-only transformer (torchao). The layers named in `keep` (the text-conditioning layers that
closed-form erasures read and the layer hash covers) stay in the load dtype and resident, so erasures computed on a
quantized or offloaded model read exact base weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

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
Offload = Literal["none", "model", "sequential"]
Quantize = Literal["none", "int8wo"]
OFFLOADS: tuple[str, ...] = ("none", "model", "sequential")
QUANTIZATIONS: tuple[str, ...] = ("none", "int8wo")


@dataclass(frozen=True)
class LoadOptions:
    """How a pipeline is placed in memory (see the module docstring); the defaults load it whole on `device`."""

    offload: Offload = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    quantize: Quantize = "none"


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
    options: LoadOptions = LoadOptions()


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """`auto` is bfloat16 on CUDA (real models are trained and served in it) and float32 elsewhere (CPU bf16 matmuls
    are slow and lose the bit-exactness the demo world's tests rely on)."""
    if name.lower() == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; expected 'auto' or one of {sorted(DTYPES)}") from None


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
    dtype: str = "auto",
    allow_downloads: bool = False,
    model_id: str | None = None,
    preserve_corpus: tuple[str, ...] = (),
    options: LoadOptions | None = None,
    keep: Sequence[str] = (),
) -> LoadedPipeline:
    """Loads `pipeline_cls.from_pretrained(model)` frozen on `device`; the shared body of the family loaders.

    `keep` names transformer Linear layers that are neither quantized nor offloaded layer by layer.

    Raises:
        ModelLoadError: the source is invalid, missing locally with downloads off, has a component without
            safetensors weights, or fails to load; or the options cannot be combined.
    """
    options = options or LoadOptions()
    if options.quantize != "none" and options.offload == "sequential":
        raise ModelLoadError("a quantized transformer cannot be offloaded layer by layer: use offload 'model'")
    source = resolve_source(model)
    target = resolve_device(device)
    try:
        pipe = pipeline_cls.from_pretrained(
            source,
            torch_dtype=resolve_dtype(dtype, target),
            local_files_only=not allow_downloads,
            use_safetensors=True,
        )
    except Exception as e:
        hint = "" if allow_downloads else " (downloads are off: set ERASURE_ALLOW_DOWNLOADS=1 to fetch from a hub)"
        raise ModelLoadError(f"could not load {pipeline_cls.__name__} from {model!r}: {e}{hint}") from e
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        component.eval()
        component.requires_grad_(False)
    if options.offload == "none":
        pipe.to(target)
    if options.quantize != "none":
        quantize_transformer(pipe.transformer, options.quantize, keep)
    if options.offload != "none":
        try:
            enable_offload(pipe, options.offload, target, keep)
        except (ValueError, ImportError, RuntimeError) as e:  # e.g. a pipeline class without an offload sequence
            raise ModelLoadError(f"offload {options.offload!r} is not available for {model!r}: {e}") from e
    set_vae_memory(pipe, tiling=options.vae_tiling, slicing=options.vae_slicing)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, family, source, model_id or model, preserve_corpus, options)


def quantize_transformer(transformer: nn.Module, method: str, keep: Sequence[str] = ()) -> int:
    """Quantizes the transformer's Linear weights in place (int8 weight-only, torchao), except `keep`'s. The layers
    stay `nn.Linear` modules, so erasure hooks find and wrap them as before. Returns how many were quantized."""
    if method not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization {method!r}; expected one of {list(QUANTIZATIONS)}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise ModelLoadError(f"quantize {method!r} needs torchao (pip install torchao): {e}") from e
    kept = set(keep)
    chosen = [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear) and n not in kept]
    quantize_(
        transformer, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn not in kept
    )
    logger.info("quantized %d transformer Linear layers to int8 weight-only (%d kept)", len(chosen), len(kept))
    return len(chosen)


def is_quantized(transformer: nn.Module) -> bool:
    """True when some Linear weight of the transformer is a quantized tensor subclass, not a plain tensor."""
    return any(
        isinstance(m, nn.Linear) and type(m.weight) not in (torch.Tensor, nn.Parameter) for m in transformer.modules()
    )


def enable_offload(pipe: Any, mode: str, device: torch.device, keep: Sequence[str] = ()) -> None:
    """Turns on diffusers' CPU offload towards `device`. Without an accelerator the same hooks run with the CPU as
    the execution device (no memory is saved; logged), so the code path is the one a GPU host runs."""
    if mode not in OFFLOADS:
        raise ModelLoadError(f"unknown offload {mode!r}; expected one of {list(OFFLOADS)}")
    if device.type == "cpu":
        logger.warning("offload %r asked for without an accelerator: running it with the CPU as execution device", mode)
    execution = torch.device(device.type, device.index if device.index is not None else 0)
    if mode == "model":
        pipe.enable_model_cpu_offload(device=execution)
        return
    # accelerate's per-layer hooks compare devices exactly: the CPU is "cpu", never "cpu:0".
    execution = torch.device("cpu") if device.type == "cpu" else execution
    _sequential_offload(pipe, execution)
    # `transformer.device` (diffusers reads the first parameter's) is where the families put encoder inputs and
    # training latents: the module owning that parameter stays resident too, so it names the execution device.
    first = next(n for n, m in pipe.transformer.named_modules() if any(True for _ in m.parameters(recurse=False)))
    _keep_resident(pipe.transformer, [*keep, first], execution)


def _sequential_offload(pipe: Any, execution: torch.device) -> None:
    """What diffusers' `enable_sequential_cpu_offload` does (accelerate's `cpu_offload` on every model component:
    weights on the meta device, each layer's weights sent to `execution` for its forward), with the device as given:
    diffusers always adds an index, and accelerate's hooks then break on "cpu:0" (a layer's weight turns into a
    plain tensor and its second forward fails)."""
    from accelerate import cpu_offload

    pipe.remove_all_hooks()
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        component = getattr(pipe, name, None)
        if component is not None:
            cpu_offload(component, execution_device=execution)


def _keep_resident(transformer: nn.Module, names: Sequence[str], device: torch.device) -> None:
    """Takes `names` out of sequential offload: their weights go back from accelerate's offload map into the module
    (on `device`), so methods that read base weights outside a forward see real tensors, not meta placeholders."""
    from accelerate.hooks import remove_hook_from_module

    for name in names:
        module = transformer.get_submodule(name)
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        if weights is None:
            continue
        remove_hook_from_module(module)
        for param, _ in list(module.named_parameters(recurse=False)):
            value = torch.as_tensor(weights[param]).detach().to(device)
            module._parameters[param] = nn.Parameter(value, requires_grad=False)


def set_vae_memory(pipe: Any, tiling: bool, slicing: bool) -> None:
    """VAE tiling (decode large images tile by tile) and slicing (one batch item at a time), where the VAE has them."""
    for wanted, method in ((tiling, "enable_tiling"), (slicing, "enable_slicing")):
        if not wanted:
            continue
        if hasattr(pipe.vae, method):
            getattr(pipe.vae, method)()
        else:
            logger.warning("the %s VAE has no %s(); left off", type(pipe.vae).__name__, method)


def load_flux_pipeline(model: str, **kwargs: Any) -> LoadedPipeline:
    """Loads any diffusers Flux folder or hub id. Text encoders need not be T5/CLIP: the demo world's are BERT, and
    `from_pretrained` loads whatever classes `model_index.json` names."""
    from diffusers import FluxPipeline

    return load_pipeline(FluxPipeline, "flux", model, **kwargs)


def load_open_sora_pipeline(model: str, **kwargs: Any) -> LoadedPipeline:
    """Loads an `OpenSoraPipeline` folder (this project's diffusers layout of Open-Sora 2.0) or hub id."""
    from erasure_core.pipelines.open_sora import OpenSoraPipeline

    return load_pipeline(OpenSoraPipeline, "open-sora", model, **kwargs)
