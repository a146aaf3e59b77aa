"""Assembling the official Open-Sora 2.0 release into a folder that `load_open_sora_pipeline` serves.

`erasure convert open-sora --checkpoint Open_Sora_v2.safetensors --vae hunyuan_vae.safetensors --t5 DIR --clip DIR
-o OUT` calls `assemble_open_sora`, which:

1. checks every input before writing anything: the two files are safetensors whose header agrees with the file size
   (a truncated download is named as such), the transformer's and the VAE's keys and shapes match the models the
   loader builds (both built on the meta device, so the 11.9B transformer costs no memory; the error names each
   missing, unexpected or mismatched key), each text-encoder folder has a known `model_type`, safetensors weights
   (pickled `.bin` files are refused) and the width the transformer reads (T5: `joint_attention_dim`, CLIP:
   `pooled_projection_dim`), and its tokenizer loads;
2. converts the transformer tensor by tensor (`convert_open_sora_tensor`) and writes it in safetensors shards of at
   most `max_shard_bytes`, so peak memory is about one shard, not the 22 GiB checkpoint; the VAE's names are the
   same in diffusers (`vae_manifest`), its tensors are copied;
3. writes the text encoders' config and the tower the pipeline runs (CLIP's text tower, T5's encoder; other
   encoders' safetensors are copied), saves their tokenizers, writes the scheduler (static
   shift 1: the pipeline sets Open-Sora's own shift) and `model_index.json` last;
4. builds all of it in a hidden temporary folder next to OUT and renames it into place, so OUT is never half written;
   an existing OUT is replaced only with `force` (moved aside, then removed once the new folder is in place).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from erasure_core.errors import ModelLoadError
from erasure_core.pipelines.open_sora.convert_open_sora import (
    check_open_sora_checkpoint,
    convert_open_sora_tensor,
)
from erasure_core.pipelines.open_sora.vae_manifest import (
    OFFICIAL_VAE_CONFIG,
    check_vae_checkpoint,
    convert_vae_key,
)

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 2**30
_HEADER_LIMIT = 100 * 2**20  # a safetensors header above this is not a checkpoint header
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_DTYPE_BYTES |= {"F8_E4M3": 1, "F8_E5M2": 1}
# Text-encoder classes by `model_type`; the CLIP-L release folder is a full CLIPModel, its text tower loads alone.
ENCODER_CLASSES = {
    "t5": "T5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
    "bert": "BertModel",
}
# Release folders hold whole models; only the tower the pipeline runs is written (CLIP's vision tower and T5's
# decoder are dropped). Other model types are copied as they are.
ENCODER_TOWERS = {"clip": ("text_model.",), "t5": ("shared.", "encoder."), "umt5": ("shared.", "encoder.")}
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}
TRANSFORMER_CLASS = ["erasure_core.pipelines.open_sora.transformer_open_sora", "OpenSoraTransformer3DModel"]


class ConversionError(ModelLoadError):
    """An input of `erasure convert` is missing, malformed or inconsistent, or OUT cannot be written."""


# ----------------------------------------------------------------------------- safetensors headers


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Key -> (dtype, shape) from a safetensors file's header, without reading its tensors.

    Raises:
        ConversionError: not a `.safetensors` file, an unreadable header, or a size that disagrees with the header
            (a truncated or padded download).
    """
    if path.suffix != ".safetensors":
        raise ConversionError(f"{path}: only .safetensors files are accepted (pickled checkpoints can run code)")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise ConversionError(f"{path}: not a safetensors file (header length {length}, file size {size})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path}: unreadable safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return _validated_entries(path, header, size - 8 - length)


def _validated_entries(path: Path, header: dict[str, Any], data_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    entries, spans = {}, []
    for key, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: malformed header entry for {key!r}") from None
        if end - begin != nbytes:
            raise ConversionError(f"{path}: {key} spans {end - begin} bytes, its shape {list(shape)} needs {nbytes}")
        entries[key] = (dtype, shape)
        spans.append((begin, end))
    declared = max((end for _, end in spans), default=0)
    if declared != data_bytes:
        raise ConversionError(
            f"{path}: the header describes {declared} bytes of tensors but the file holds {data_bytes} "
            "(truncated or corrupted download?)"
        )
    return entries


# ----------------------------------------------------------------------------- text encoders


@dataclass(frozen=True)
class EncoderFolder:
    """A checked text-encoder folder: its weight files, the transformers class to load, the tokenizer, and the key
    prefixes of the tower to keep (empty: every tensor)."""

    path: Path
    model_class: str
    weight_files: tuple[Path, ...]
    tokenizer: Any
    keep: tuple[str, ...] = ()


def _encoder_width(config: Mapping[str, Any]) -> int:
    text = config.get("text_config") or config  # a full CLIPModel folder: the text tower's width
    width = text.get("d_model") or text.get("hidden_size")
    return int(width or 0)


def inspect_encoder(path: Path, role: str, width: int) -> EncoderFolder:
    """Checks a text-encoder folder (`role` names its flag in messages) whose output the transformer reads at `width`.

    Raises:
        ConversionError: no such folder, no config, an unknown model type, a width other than `width`, no
            safetensors weights, or a tokenizer that does not load.
    """
    if not path.is_dir():
        raise ConversionError(f"--{role} {path}: no such folder")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"--{role} {path}: no readable config.json ({e})") from None
    model_type = config.get("model_type")
    if model_type not in ENCODER_CLASSES:
        raise ConversionError(f"--{role} {path}: model_type {model_type!r} is not one of {sorted(ENCODER_CLASSES)}")
    if _encoder_width(config) != width:
        raise ConversionError(
            f"--{role} {path}: the encoder's width is {_encoder_width(config)} but the transformer reads {width}"
        )
    weights = tuple(sorted(path.glob("*.safetensors")))
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {pickled}: convert them to safetensors first)" if pickled else ""
        raise ConversionError(f"--{role} {path}: no .safetensors weights{hint}")
    keys = [key for file in weights for key in read_safetensors_header(file)]
    keep = ENCODER_TOWERS.get(model_type, ())
    if keep and not any(key.startswith(keep) for key in keys):
        raise ConversionError(f"--{role} {path}: no {' / '.join(p + '*' for p in keep)} tensors in its weights")
    return EncoderFolder(path, ENCODER_CLASSES[model_type], weights, _load_tokenizer(path, role), keep)


def _load_tokenizer(path: Path, role: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConversionError(f"--{role} {path}: its tokenizer does not load ({e})") from None


def _write_encoder(folder: EncoderFolder, model_dir: Path, tokenizer_dir: Path, max_bytes: int) -> None:
    model_dir.mkdir()
    shutil.copyfile(folder.path / "config.json", model_dir / "config.json")
    if folder.keep:
        tower = (
            (key, tensor)
            for file in folder.weight_files
            for key, tensor in _official_tensors(file)
            if key.startswith(folder.keep)
        )
        write_shards(model_dir, tower, max_bytes, name="model")
    else:
        for file in [*folder.weight_files, *folder.path.glob("*.safetensors.index.json")]:
            shutil.copyfile(file, model_dir / file.name)  # follows links: OUT never depends on the input folders
    folder.tokenizer.save_pretrained(str(tokenizer_dir))


# ----------------------------------------------------------------------------- sharded safetensors writing


def write_shards(
    target: Path, tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int, name: str = "diffusion_pytorch_model"
) -> int:
    """Writes `tensors` into `target` as diffusers reads them: one `{name}.safetensors`, or numbered shards of at most
    `max_bytes` (a larger single tensor gets a shard of its own) plus `{name}.safetensors.index.json`. Only one shard
    is held in memory. Returns the number of shards."""
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        save_file(pending, str(target / f".shard-{len(shards)}"), metadata={"format": "pt"})
        shards.append(list(pending))
        pending, pending_bytes = {}, 0

    for key, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + nbytes > max_bytes:
            flush()
        pending[key] = tensor.contiguous()
        pending_bytes += nbytes
        total += nbytes
    if pending or not shards:
        flush()
    _name_shards(target, shards, name, total)
    return len(shards)


def _name_shards(target: Path, shards: list[list[str]], name: str, total: int) -> None:
    if len(shards) == 1:
        (target / ".shard-0").rename(target / f"{name}.safetensors")
        return
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(shards):
        file = f"{name}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (target / f".shard-{i}").rename(target / file)
        weight_map |= dict.fromkeys(keys, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _official_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            yield key, f.get_tensor(key)


def _converted_transformer(path: Path, hidden_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in _official_tensors(path):
        for name, value in convert_open_sora_tensor(key, tensor, hidden_size):
            yield name, value.clone()  # row splits are views of one storage, which safetensors refuses to share


# ----------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class ReleaseInputs:
    """The official release's parts, and the configs they must match (default: Open-Sora 2.0 at 256px)."""

    checkpoint: Path
    vae: Path
    t5: Path
    clip: Path
    transformer_config: Mapping[str, Any] | None = None
    vae_config: Mapping[str, Any] | None = None


def _transformer_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel

    try:
        with torch.device("meta"):
            model = OpenSoraTransformer3DModel(**(overrides or {}))
    except (TypeError, ValueError) as e:  # an unknown or inconsistent field of --transformer-config
        raise ConversionError(f"invalid transformer config: {e}") from None
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def _check_inputs(inputs: ReleaseInputs, out: Path) -> tuple[dict[str, Any], EncoderFolder, EncoderFolder]:
    for given in (inputs.checkpoint, inputs.vae, inputs.t5, inputs.clip):
        resolved = given.resolve()
        if resolved == out or out in resolved.parents:
            raise ConversionError(f"OUT {out} would hold or replace the input {given}: choose another folder")
    config = _transformer_config(inputs.transformer_config)
    shapes = {k: shape for k, (_, shape) in read_safetensors_header(inputs.checkpoint).items()}
    check_open_sora_checkpoint(shapes, config)
    vae_shapes = {k: shape for k, (_, shape) in read_safetensors_header(inputs.vae).items()}
    try:
        check_vae_checkpoint(vae_shapes, inputs.vae_config)
    except TypeError as e:  # an unknown field of --vae-config
        raise ConversionError(f"invalid VAE config: {e}") from None
    clip = inspect_encoder(inputs.clip, "clip", int(config["pooled_projection_dim"]))
    t5 = inspect_encoder(inputs.t5, "t5", int(config["joint_attention_dim"]))
    return config, clip, t5


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConversionError(f"OUT {out} exists and is not a folder")
    if out.exists() and not force:
        raise ConversionError(f"OUT {out} exists: pass --force to replace it")


def _write_folder(
    target: Path,
    inputs: ReleaseInputs,
    config: dict[str, Any],
    encoders: tuple[EncoderFolder, EncoderFolder],
    shard: int,
) -> None:
    import diffusers

    clip, t5 = encoders
    target.mkdir()
    transformer_dir = target / "transformer"
    hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    count = write_shards(transformer_dir, _converted_transformer(inputs.checkpoint, hidden), shard)
    meta = {"_class_name": TRANSFORMER_CLASS[1], "_diffusers_version": diffusers.__version__}
    (transformer_dir / "config.json").write_text(json.dumps(meta | config, indent=2))
    vae_tensors = ((convert_vae_key(k), v) for k, v in _official_tensors(inputs.vae))
    write_shards(target / "vae", vae_tensors, shard)
    vae_config = {"_class_name": "AutoencoderKLHunyuanVideo", "_diffusers_version": diffusers.__version__}
    vae_config |= OFFICIAL_VAE_CONFIG | dict(inputs.vae_config or {})
    (target / "vae" / "config.json").write_text(json.dumps(vae_config, indent=2))
    _write_encoder(clip, target / "text_encoder", target / "tokenizer", shard)
    _write_encoder(t5, target / "text_encoder_2", target / "tokenizer_2", shard)
    (target / "scheduler").mkdir()
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "OpenSoraPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", clip.model_class],
        "text_encoder_2": ["transformers", t5.model_class],
        "tokenizer": ["transformers", type(clip.tokenizer).__name__],
        "tokenizer_2": ["transformers", type(t5.tokenizer).__name__],
        "transformer": TRANSFORMER_CLASS,
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
    }
    (target / "model_index.json").write_text(json.dumps(index, indent=2))  # last: what makes the folder loadable
    logger.info("wrote the transformer in %d shard(s) and the pipeline folder %s", count, target)


def _swap_into_place(staging: Path, out: Path) -> None:
    aside = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}") if out.exists() else None
    if aside is not None:
        out.rename(aside)
    try:
        staging.rename(out)
    except OSError:
        if aside is not None:
            aside.rename(out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def assemble_open_sora(
    inputs: ReleaseInputs,
    out: Path,
    force: bool = False,
    check_only: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Checks the release and (unless `check_only`) assembles the folder OUT that `ERASURE_OPEN_SORA_MODEL=OUT`
    serves; see the module docstring. Returns OUT, resolved.

    Raises:
        ConversionError: an input is missing or malformed, or OUT exists without `force`.
        CheckpointMismatchError: the transformer's or the VAE's keys/shapes do not match (each key named).
    """
    if max_shard_bytes <= 0:
        raise ConversionError(f"the shard size must be positive, got {max_shard_bytes} bytes")
    out = out.expanduser().resolve()
    _check_out(out, force)
    config, clip, t5 = _check_inputs(inputs, out)
    logger.info("the release matches: transformer, VAE, CLIP (%s) and T5 (%s)", clip.model_class, t5.model_class)
    if check_only:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _write_folder(staging, inputs, config, (clip, t5), max_shard_bytes)
        _check_out(out, force)  # another process may have created OUT meanwhile
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
