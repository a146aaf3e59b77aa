"""Reading an existing Flux LoRA (safetensors) as per-module low-rank deltas of the base transformer.

Two key formats are understood:
  - diffusers / peft: `[transformer.]<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], with an optional
    scalar `<module>.alpha` (or `.lora_alpha`) giving the scale alpha / r (none: scale 1, as diffusers loads it);
  - kohya (sd-scripts) Flux: `lora_unet_<block>.lora_down.weight` / `.lora_up.weight` / `.alpha`, on the original
    BFL module names. Fused projections (a double block's `img_attn_qkv` / `txt_attn_qkv`, a single block's `linear1`)
    map onto several diffusers modules: the down matrix is shared and the up matrix's rows are split by the target
    modules' output sizes, which gives exactly the fused delta (the mapping follows diffusers'
    `_convert_kohya_flux_lora_to_diffusers`).

Everything is checked against the base transformer before a delta is returned: every target exists and is a Linear
layer, factor shapes match it, values are finite floats, and counts and sizes are bounded. Every refusal is an
`InvalidLoraError` (an `ArtifactError`) whose message names the offending key. Nothing here unpickles: safetensors
only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from erasure_core.adapters import get_linear
from erasure_core.artifacts import LowRankDelta
from erasure_core.errors import InvalidConfigError, InvalidLoraError, NoMatchingModuleError

MAX_LORA_BYTES = 2 * 1024**3
MAX_LORA_TENSORS = 8192
MAX_LORA_MODULES = 4096
MAX_LORA_RANK = 1024
LORA_SUFFIX = ".safetensors"

_PEFT_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".alpha": "alpha", ".lora_alpha": "alpha"}
_KOHYA_SUFFIXES = {".lora_down.weight": "A", ".lora_up.weight": "B", ".alpha": "alpha"}
_KOHYA_PREFIX = "lora_unet_"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")

# kohya (BFL) module name -> the diffusers modules it covers, in the order of its output rows.
_KOHYA_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_KOHYA_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
_KOHYA_GLOBAL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
}
_KOHYA_BLOCK = re.compile(r"^(double|single)_blocks_(\d{1,4})_([a-z0-9_]+)$")


@dataclass(frozen=True)
class ImportedLora:
    """A LoRA read and checked against one base transformer: deltas by diffusers module name."""

    deltas: dict[str, LowRankDelta]
    format: str  # "peft" or "kohya"

    @property
    def max_rank(self) -> int:
        return max(d.rank for d in self.deltas.values())


def read_lora_bytes(data: bytes, source: str = "lora") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors payload (header metadata is ignored); InvalidLoraError if it is not one."""
    from safetensors.torch import load

    if len(data) > MAX_LORA_BYTES:
        raise InvalidLoraError(f"{source}: larger than {MAX_LORA_BYTES} bytes")
    if len(data) < 8:
        raise InvalidLoraError(f"{source}: not a safetensors file (too short)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise InvalidLoraError(f"{source}: not a safetensors file (header length out of range)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidLoraError(f"{source}: not a safetensors file (header is not JSON)") from e
    if not isinstance(header, dict):
        raise InvalidLoraError(f"{source}: not a safetensors file (header is not an object)")
    if len(header) - ("__metadata__" in header) > MAX_LORA_TENSORS:
        raise InvalidLoraError(f"{source}: more than {MAX_LORA_TENSORS} tensors")
    try:
        return load(data)
    except Exception as e:  # safetensors raises several types for corrupt payloads
        raise InvalidLoraError(f"{source}: not a valid safetensors file ({e})") from e


def resolve_import_path(import_dir: str | Path, name: str) -> Path:
    """The file `name` names inside `import_dir`, refusing anything that leaves it (also through symlinks), that is
    not a `.safetensors` regular file, or that is too large. InvalidConfigError names the path."""
    if not name or "\x00" in name:
        raise InvalidConfigError("options.path: empty or invalid file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise InvalidConfigError(f"options.path {name!r}: must be a relative name inside the import folder")
    if relative.suffix != LORA_SUFFIX:
        raise InvalidConfigError(f"options.path {name!r}: only {LORA_SUFFIX} files are imported")
    try:
        root = Path(import_dir).resolve(strict=True)
        resolved = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise InvalidConfigError(f"options.path {name!r}: no such file in the import folder") from e
    if not resolved.is_relative_to(root):
        raise InvalidConfigError(f"options.path {name!r}: resolves outside the import folder")
    if resolved.suffix != LORA_SUFFIX:
        raise InvalidConfigError(f"options.path {name!r}: links to a file that is not {LORA_SUFFIX}")
    if not resolved.is_file():
        raise InvalidConfigError(f"options.path {name!r}: not a regular file")
    if resolved.stat().st_size > MAX_LORA_BYTES:
        raise InvalidConfigError(f"options.path {name!r}: larger than {MAX_LORA_BYTES} bytes")
    return resolved


def read_lora_file(path: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors LoRA file (`resolve_import_path` first where the name comes from a caller)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidLoraError(f"{source or path}: cannot read ({e.strerror or e})") from e
    return read_lora_bytes(data, source or str(path))


def _split_key(key: str, suffixes: dict[str, str]) -> tuple[str, str] | None:
    for suffix, part in suffixes.items():
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part
    return None


def _kohya_targets(name: str, key: str) -> tuple[str, ...]:
    """The diffusers modules one kohya module name covers; InvalidLoraError for what is not supported."""
    short = name[len(_KOHYA_PREFIX) :]
    if short in _KOHYA_GLOBAL:
        return (_KOHYA_GLOBAL[short],)
    match = _KOHYA_BLOCK.match(short)
    if match:
        kind, index, part = match.groups()
        table, block = (
            (_KOHYA_DOUBLE, "transformer_blocks") if kind == "double" else (_KOHYA_SINGLE, "single_transformer_blocks")
        )
        if part in table:
            return tuple(f"{block}.{int(index)}.{target}" for target in table[part])
    raise InvalidLoraError(f"{key}: unsupported kohya Flux module {short!r}")


def _group(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, dict[str, tuple[str, torch.Tensor]]]]:
    """(format, {source module name: {"A"|"B"|"alpha": (key, tensor)}})."""
    if not tensors:
        raise InvalidLoraError("lora: the file holds no tensors")
    kohya = any(k.startswith(_KOHYA_PREFIX) for k in tensors)
    fmt = "kohya" if kohya else "peft"
    suffixes = _KOHYA_SUFFIXES if kohya else _PEFT_SUFFIXES
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key in sorted(tensors):
        if key.startswith(("lora_te", "text_encoder")):
            raise InvalidLoraError(f"{key}: text-encoder LoRAs are not supported (transformer modules only)")
        if kohya and not key.startswith(_KOHYA_PREFIX):
            raise InvalidLoraError(f"{key}: not a kohya Flux key (the file mixes key formats)")
        split = _split_key(key, suffixes)
        if split is None:
            expected = ", ".join(suffixes)
            raise InvalidLoraError(f"{key}: unsupported LoRA key (expected a module name ending in {expected})")
        name, part = split
        if not kohya:
            name = name.removeprefix("transformer.")
            if not _MODULE_NAME.match(name):
                raise InvalidLoraError(f"{key}: {name!r} is not a module name")
        slot = groups.setdefault(name, {})
        if part in slot:
            raise InvalidLoraError(f"{key}: duplicates {slot[part][0]}")
        slot[part] = (key, tensors[key])
    return fmt, groups


def _factor(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_floating_point():
        raise InvalidLoraError(f"{key}: dtype {tensor.dtype} is not a floating-point type")
    if tensor.ndim != 2 or min(tensor.shape) < 1:
        raise InvalidLoraError(f"{key}: expected a 2-d matrix, got shape {list(tensor.shape)}")
    value = tensor.float()
    if not bool(torch.isfinite(value).all()):
        raise InvalidLoraError(f"{key}: holds NaN or infinite values")
    return value.contiguous()


def _scale(parts: dict[str, tuple[str, torch.Tensor]], rank: int) -> float:
    if "alpha" not in parts:
        return 1.0
    key, tensor = parts["alpha"]
    if tensor.numel() != 1 or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise InvalidLoraError(f"{key}: alpha must be one number, got shape {list(tensor.shape)}")
    alpha = float(tensor.float().reshape(()))
    if not math.isfinite(alpha):
        raise InvalidLoraError(f"{key}: alpha is not finite")
    return alpha / rank


def _linear(model: nn.Module, module: str, key: str) -> nn.Linear:
    """The model's Linear `module`, as every erasure finds its layers (`adapters.get_linear`), refused by `key`."""
    try:
        return get_linear(model, module)
    except NoMatchingModuleError as e:
        raise InvalidLoraError(f"{key}: {e}") from None


def parse_lora(tensors: dict[str, torch.Tensor], model: nn.Module) -> ImportedLora:
    """Deltas by diffusers module name of `model` (the base transformer), checked against it."""
    if len(tensors) > MAX_LORA_TENSORS:
        raise InvalidLoraError(f"lora: more than {MAX_LORA_TENSORS} tensors")
    fmt, groups = _group(tensors)
    deltas: dict[str, LowRankDelta] = {}
    origin: dict[str, str] = {}
    for name, parts in groups.items():
        any_key = next(iter(parts.values()))[0]
        for part in ("A", "B"):
            if part not in parts:
                missing = {"A": "lora_A / lora_down", "B": "lora_B / lora_up"}[part]
                raise InvalidLoraError(f"{any_key}: module {name!r} has no {missing} weight")
        (a_key, a_raw), (b_key, b_raw) = parts["A"], parts["B"]
        a, b = _factor(a_key, a_raw), _factor(b_key, b_raw)
        rank = a.shape[0]
        if rank > MAX_LORA_RANK:
            raise InvalidLoraError(f"{a_key}: rank {rank} exceeds {MAX_LORA_RANK}")
        if b.shape[1] != rank:
            raise InvalidLoraError(f"{b_key}: shape {list(b.shape)} does not match rank {rank} of {a_key}")
        scale = _scale(parts, rank)
        targets = _kohya_targets(name, a_key) if fmt == "kohya" else (name,)
        modules = [_linear(model, t, a_key) for t in targets]
        for module, target in zip(modules, targets, strict=True):
            if a.shape[1] != module.in_features:
                raise InvalidLoraError(
                    f"{a_key}: input size {a.shape[1]} does not match {target!r} ({module.in_features} inputs)"
                )
        sizes = [m.out_features for m in modules]
        if b.shape[0] != sum(sizes):
            covered = " + ".join(f"{t} ({s})" for t, s in zip(targets, sizes, strict=True))
            raise InvalidLoraError(f"{b_key}: output size {b.shape[0]} does not match {covered}")
        for target, rows in zip(targets, torch.split(b, sizes, dim=0), strict=True):
            if target in deltas:
                raise InvalidLoraError(f"{a_key}: module {target!r} is also set by {origin[target]}")
            deltas[target] = LowRankDelta(a.clone() if len(targets) > 1 else a, rows.contiguous(), scale)
            origin[target] = a_key
        if len(deltas) > MAX_LORA_MODULES:
            raise InvalidLoraError(f"{a_key}: more than {MAX_LORA_MODULES} modules")
    return ImportedLora(deltas, fmt)
