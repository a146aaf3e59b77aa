"""Converting Open-Sora 2.0 checkpoints and LoRAs to `OpenSoraTransformer3DModel` names.

`Open_Sora_v2.safetensors` (hub `hpcai-tech/Open-Sora-v2`) is a plain state dict in BFL Flux layout with split q/k/v
(`fused_qkv=False`). The mapping is diffusers' Flux converter (`convert_flux_transformer_checkpoint_to_diffusers`)
after the split, with two facts that matter:

* Modulation chunks: BFL's `Modulation` and diffusers' `AdaLayerNormZero(Single)` both chunk (shift, scale, gate),
  so block modulations copy as-is; the final layer chunks (shift, scale) while `AdaLayerNormContinuous` chunks
  (scale, shift), so `final_layer.adaLN_modulation.1` rows are swapped by halves.
* Single blocks: `v_mlp` is fused [v (hidden rows); mlp_in (mlp_hidden rows)] and is split into `attn.to_v` and
  `proj_mlp`; q and k are separate already.

RoPE needs no permutation: the port applies rotate-half RoPE like the official model (see the transformer module).

Checking a checkpoint before converting it: `check_open_sora_checkpoint` compares an official key -> shape table (a
safetensors header is enough) with `official_shapes` of the model built on the meta device (the inverse of the table
above), so the full 11.9B model is checked without memory and an error names official keys; `check_shapes` is the
comparison, shared with the VAE (`vae_manifest`). `tests/open_sora/test_convert.py` holds the inverse equal to the
independent manifest in `tests/open_sora/official_reference.py` at full size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from erasure_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

TOP_LEVEL: dict[str, str] = {
    "img_in": "x_embedder",
    "cond_in": "cond_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}

DOUBLE_BLOCK: dict[str, str] = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.q_proj": "attn.to_q",
    "img_attn.k_proj": "attn.to_k",
    "img_attn.v_proj": "attn.to_v",
    "txt_attn.q_proj": "attn.add_q_proj",
    "txt_attn.k_proj": "attn.add_k_proj",
    "txt_attn.v_proj": "attn.add_v_proj",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}

SINGLE_BLOCK: dict[str, str] = {
    "q_proj": "attn.to_q",
    "k_proj": "attn.to_k",
    "linear2": "proj_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
    "modulation.lin": "norm.linear",
}

# Official module whose output rows are the concatenation [v; mlp_in]: split into these two modules.
SINGLE_FUSED = ("v_mlp", ("attn.to_v", "proj_mlp"))
SWAPPED_HALVES = "final_layer.adaLN_modulation.1"

_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_PARAM_SUFFIX = {"weight": "weight", "bias": "bias", "scale": "weight"}


def map_module_name(name: str) -> str | tuple[str, str]:
    """Maps an official module name to ours; the fused single-block `v_mlp` maps to (to_v, proj_mlp).

    Raises:
        KeyError: the name is not an Open-Sora 2.0 (fused_qkv=False) module.
    """
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    match = _BLOCK.match(name)
    if match is None:
        raise KeyError(name)
    kind, index, rest = match.groups()
    if kind == "double_blocks":
        return f"transformer_blocks.{index}.{DOUBLE_BLOCK[rest]}"
    prefix = f"single_transformer_blocks.{index}"
    if rest == SINGLE_FUSED[0]:
        return tuple(f"{prefix}.{target}" for target in SINGLE_FUSED[1])  # type: ignore[return-value]
    return f"{prefix}.{SINGLE_BLOCK[rest]}"


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _split_rows(tensor: torch.Tensor, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if tensor.shape[0] <= hidden_size:
        raise ValueError(f"fused v_mlp has {tensor.shape[0]} rows, expected more than hidden size {hidden_size}")
    return tensor[:hidden_size], tensor[hidden_size:]


def _hidden_size(state_dict: Mapping[str, torch.Tensor]) -> int:
    if "img_in.weight" not in state_dict:
        raise ValueError("not an Open-Sora 2.0 checkpoint: no 'img_in.weight' key")
    return int(state_dict["img_in.weight"].shape[0])


def convert_open_sora_tensor(key: str, tensor: torch.Tensor, hidden_size: int) -> list[tuple[str, torch.Tensor]]:
    """Converts one official tensor to our (name, tensor) pairs: two for the fused `v_mlp`, one otherwise.

    Raises:
        KeyError: the key is not an Open-Sora 2.0 (fused_qkv=False) key.
        ValueError: a fused `v_mlp` has no more rows than `hidden_size`.
    """
    module, _, param = key.rpartition(".")
    target = map_module_name(module)
    suffix = _PARAM_SUFFIX[param]
    if isinstance(target, tuple):
        first, second = _split_rows(tensor, hidden_size)
        return [(f"{target[0]}.{suffix}", first), (f"{target[1]}.{suffix}", second)]
    return [(f"{target}.{suffix}", _swap_halves(tensor) if module == SWAPPED_HALVES else tensor)]


def convert_open_sora_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts an official Open-Sora 2.0 state dict to `OpenSoraTransformer3DModel` keys.

    Every official key must be consumed; tensors are not copied except where rows are reordered.

    Args:
        state_dict: the contents of `Open_Sora_v2.safetensors` (no prefix, split q/k/v).

    Returns:
        The diffusers-style state dict.

    Raises:
        ValueError: a key is unknown (for example a fused `qkv`/`linear1` checkpoint or a `guidance_in` layer).
    """
    hidden = _hidden_size(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        try:
            converted.update(convert_open_sora_tensor(key, tensor, hidden))
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not Open-Sora 2.0 (fused_qkv=False) keys, e.g. {unknown[:5]}")
    return converted


# ----------------------------------------------------------------------------- checking a checkpoint's manifest


class CheckpointMismatchError(ModelLoadError, ValueError):
    """A checkpoint's keys or shapes do not fit the model it is converted into (the message names each key)."""


Shapes = dict[str, tuple[int, ...]]


def _listed(names: list[str], limit: int) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_shapes(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str, limit: int = 8
) -> None:
    """Compares a checkpoint's key -> shape table with the expected one.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and mismatched keys (up to `limit` of each).
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing, limit)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected, limit)}")
    if mismatched:
        shown = [f"{k} has shape {list(found[k])}, expected {list(expected[k])}" for k in mismatched]
        problems.append(f"{len(mismatched)} key(s) of the wrong shape: {_listed(shown, limit)}")
    if problems:
        raise CheckpointMismatchError(f"{what} does not match the model: " + "; ".join(problems))


_OURS_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_OURS_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.(.+)$")


def official_module_name(module: str) -> str:
    """The inverse of `map_module_name` for one of our module names (`to_v` and `proj_mlp` both give `v_mlp`)."""
    inverse_top = {v: k for k, v in TOP_LEVEL.items()}
    if module in inverse_top:
        return inverse_top[module]
    if match := _OURS_DOUBLE.match(module):
        return f"double_blocks.{match[1]}.{ {v: k for k, v in DOUBLE_BLOCK.items()}[match[2]] }"
    if match := _OURS_SINGLE.match(module):
        if match[2] in SINGLE_FUSED[1]:
            return f"single_blocks.{match[1]}.{SINGLE_FUSED[0]}"
        return f"single_blocks.{match[1]}.{ {v: k for k, v in SINGLE_BLOCK.items()}[match[2]] }"
    raise KeyError(module)


def official_shapes(model_shapes: Mapping[str, tuple[int, ...]]) -> Shapes:
    """The official key -> shape table that converts into `model_shapes` (our names): the fused `v_mlp` rows are
    the sum of `to_v`'s and `proj_mlp`'s, and norm weights are official `.scale` tensors."""
    official: Shapes = {}
    for key, shape in model_shapes.items():
        module, _, param = key.rpartition(".")
        name = official_module_name(module)
        key_official = f"{name}.{'scale' if name.endswith('_norm') else param}"
        if name.endswith(SINGLE_FUSED[0]) and key_official in official:
            rows = official[key_official][0] + shape[0]
            official[key_official] = (rows, *shape[1:])
        else:
            official[key_official] = tuple(shape)
    return official


def meta_transformer_shapes(config: Mapping[str, object] | None = None) -> Shapes:
    """Key -> shape of `OpenSoraTransformer3DModel(**config)` (default: Open-Sora 2.0) built on the meta device."""
    from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel

    with torch.device("meta"):
        model = OpenSoraTransformer3DModel(**(config or {}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_open_sora_checkpoint(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, object] | None = None
) -> None:
    """Checks an official transformer checkpoint's key -> shape table against the model `config` describes (built
    on the meta device, so the full 11.9B model costs no memory); the error names official keys.

    Raises:
        CheckpointMismatchError: a key is missing, unexpected or of the wrong shape.
    """
    expected = official_shapes(meta_transformer_shapes(config))
    check_shapes(shapes, expected, "Open-Sora 2.0 transformer checkpoint (OpenSoraTransformer3DModel)")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?:transformer\.)?(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.(weight|bias)$")


def convert_open_sora_lora(state_dict: Mapping[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor]:
    """Converts a peft LoRA on official Open-Sora module names to diffusers `transformer.` keys.

    Accepts `base_model.model.<module>.lora_A.weight` (peft `save_pretrained`) and bare `<module>.lora_A.weight`
    keys, with or without an adapter-name segment. A LoRA on the fused `v_mlp` shares `lora_A` between `to_v` and
    `proj_mlp` and has its `lora_B` split by rows (B A split by rows is exact); a LoRA on the final modulation has
    its `lora_B` halves swapped like the base weight.

    Args:
        state_dict: the LoRA tensors.
        hidden_size: the model's hidden size (3072 for Open-Sora 2.0), where `v_mlp` rows split.

    Returns:
        `{"transformer.<our module>.lora_A.weight": ..., ...}`, ready for `transformer.load_lora_adapter(...,
        prefix="transformer")` or `pipe.load_lora_weights`.

    Raises:
        ValueError: a key is not a LoRA A/B tensor on a known Open-Sora module.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _LORA_KEY.match(key)
        try:
            if match is None:
                raise KeyError(key)
            module, lora, param = match.groups()
            target = map_module_name(module)
        except KeyError:
            raise ValueError(f"{key!r} is not a LoRA A/B tensor on an Open-Sora 2.0 module") from None
        if isinstance(target, tuple):
            parts = (tensor, tensor) if lora == "lora_A" else _split_rows(tensor, hidden_size)
            for name, part in zip(target, parts, strict=True):
                converted[f"transformer.{name}.{lora}.{param}"] = part
            continue
        if module == SWAPPED_HALVES and lora == "lora_B":
            tensor = _swap_halves(tensor)
        converted[f"transformer.{target}.{lora}.{param}"] = tensor
    return converted


def load_open_sora_transformer(
    checkpoint: str | Path,
    torch_dtype: torch.dtype = torch.bfloat16,
    **config: object,
):
    """Builds `OpenSoraTransformer3DModel` (default config unless overridden) from the official single file.

    The model is created on the meta device and the converted tensors are assigned, so peak memory is about one
    copy of the checkpoint.
    """
    from safetensors.torch import load_file

    from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel

    state_dict = convert_open_sora_checkpoint(load_file(str(checkpoint)))
    with torch.device("meta"):
        model = OpenSoraTransformer3DModel(**config)
    state_dict = {k: v.to(torch_dtype).contiguous() for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    logger.info("loaded Open-Sora 2.0 transformer from %s", checkpoint)
    return model.eval()
