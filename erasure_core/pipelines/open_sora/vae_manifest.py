"""The HunyuanVideo VAE of Open-Sora 2.0 (`hunyuan_vae.safetensors`): its key/shape manifest and name conversion.

What was verified against what (2026-11, hpcaitech/Open-Sora main at 7ad6a96, diffusers 0.42.1):

* The official module is `AutoencoderKLCausal3D` (`opensora/models/hunyuan_vae/`), registered as "hunyuan_vae" and
  built by `configs/diffusion/inference/256px.py` with in/out channels 3, latent 16, layers_per_block 2,
  time_compression_ratio 4, scale_factor 0.476986, shift_factor 0 and `AutoEncoder3DConfig` defaults for the rest
  (block_out_channels (128, 256, 512, 512), spatial ratio 8, 32 norm groups, mid-block attention on). The release
  file is loaded with `load_checkpoint(..., strict=True)`, which for a `.safetensors` path is `load_file` followed by
  `load_state_dict` with no renaming and no prefix: the file's keys are exactly the module's state-dict names.
* `official_vae_manifest` writes those names and shapes from the official constructors (not from diffusers):
  `CausalConv3d` wraps its `nn.Conv3d` subclass as `.conv`; `ResnetBlockCausal3D` has norm1/conv1/norm2/conv2 and a
  1x1x1 `conv_shortcut` when the width changes; a down block has `layers_per_block` resnets, an up block one more;
  the sampler convolutions sit in the blocks that halve space (`i < log2(spatial ratio)`) or time (for a 4x time
  ratio, `n-3 <= i < n-1`); the mid block is resnet, attention (diffusers `Attention` with `group_norm`, biased
  to_q/to_k/to_v/to_out.0), resnet; then `conv_norm_out`, `conv_out` (2 x latent channels in the encoder), and the
  1x1x1 `quant_conv` / `post_quant_conv`.
* diffusers `AutoencoderKLHunyuanVideo` at its defaults has exactly these 248 keys and shapes (246,478,803
  parameters); `tests/open_sora/test_convert_vae.py` builds both at full size on the meta device and compares every
  key and shape. diffusers' own `scripts/convert_hunyuan_video_to_diffusers.py` converts HunyuanVideo's VAE with an
  empty rename table and `strict=True`, which agrees: `convert_vae_key` is the identity, kept as a function so that
  a future rename has one home.
* Not covered by a key/shape comparison: behaviour that has no weights (strides, causal padding, the attention's
  causal mask, nearest upsampling of the first frame). Those were read in both sources and match; the numbers of
  the real release were not run here (no weights, no network).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from erasure_core.pipelines.open_sora.convert_open_sora import check_shapes

logger = logging.getLogger(__name__)

# The release's VAE as diffusers `AutoencoderKLHunyuanVideo` config (the official `AutoEncoder3DConfig` values).
OFFICIAL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
    "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "scaling_factor": 0.476986,
    "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4,
    "mid_block_add_attention": True,
}
OFFICIAL_VAE_PARAMETERS = 246_478_803

Shapes = dict[str, tuple[int, ...]]


def _conv(prefix: str, out_ch: int, in_ch: int, kernel: int) -> Shapes:
    """A `CausalConv3d`: its weights live one level down, in `.conv`."""
    return {f"{prefix}.conv.weight": (out_ch, in_ch, kernel, kernel, kernel), f"{prefix}.conv.bias": (out_ch,)}


def _norm(prefix: str, channels: int) -> Shapes:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _resnet(prefix: str, in_ch: int, out_ch: int) -> Shapes:
    keys = _norm(f"{prefix}.norm1", in_ch) | _conv(f"{prefix}.conv1", out_ch, in_ch, 3)
    keys |= _norm(f"{prefix}.norm2", out_ch) | _conv(f"{prefix}.conv2", out_ch, out_ch, 3)
    if in_ch != out_ch:
        keys |= _conv(f"{prefix}.conv_shortcut", out_ch, in_ch, 1)
    return keys


def _mid_block(prefix: str, channels: int, attention: bool) -> Shapes:
    keys = _resnet(f"{prefix}.resnets.0", channels, channels) | _resnet(f"{prefix}.resnets.1", channels, channels)
    if attention:
        attn = f"{prefix}.attentions.0"
        keys |= _norm(f"{attn}.group_norm", channels)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            keys |= {f"{attn}.{proj}.weight": (channels, channels), f"{attn}.{proj}.bias": (channels,)}
    return keys


def _resamples(n_blocks: int, spatial_ratio: int, temporal_ratio: int) -> list[bool]:
    """Which blocks (encoder order) carry a sampler convolution, as `EncoderCausal3D` / `DecoderCausal3D` decide."""
    spatial_layers = int(math.log2(spatial_ratio))
    if temporal_ratio == 4:
        temporal = [n_blocks - 3 <= i < n_blocks - 1 for i in range(n_blocks)]
    elif temporal_ratio == 8:
        temporal = [i < spatial_layers for i in range(n_blocks)]
    else:
        raise ValueError(f"the official VAE supports temporal ratios 4 and 8, not {temporal_ratio}")
    return [i < spatial_layers or temporal[i] for i in range(n_blocks)]


def _encoder(cfg: Mapping[str, Any], resample: list[bool]) -> Shapes:
    widths, layers = list(cfg["block_out_channels"]), int(cfg["layers_per_block"])
    keys: Shapes = _conv("encoder.conv_in", widths[0], int(cfg["in_channels"]), 3)
    prev = widths[0]
    for i, width in enumerate(widths):
        for j in range(layers):
            keys |= _resnet(f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else width, width)
        if resample[i]:
            keys |= _conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", width, width, 3)
        prev = width
    keys |= _mid_block("encoder.mid_block", widths[-1], bool(cfg["mid_block_add_attention"]))
    keys |= _norm("encoder.conv_norm_out", widths[-1])
    return keys | _conv("encoder.conv_out", 2 * int(cfg["latent_channels"]), widths[-1], 3)  # mean and log-variance


def _decoder(cfg: Mapping[str, Any], resample: list[bool]) -> Shapes:
    widths, layers = list(cfg["block_out_channels"]), int(cfg["layers_per_block"])
    keys: Shapes = _conv("decoder.conv_in", widths[-1], int(cfg["latent_channels"]), 3)
    keys |= _mid_block("decoder.mid_block", widths[-1], bool(cfg["mid_block_add_attention"]))
    prev = widths[-1]
    for i, width in enumerate(reversed(widths)):
        for j in range(layers + 1):
            keys |= _resnet(f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else width, width)
        if resample[i]:  # `DecoderCausal3D` applies the encoder's rule to its own block index
            keys |= _conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", width, width, 3)
        prev = width
    keys |= _norm("decoder.conv_norm_out", widths[0])
    return keys | _conv("decoder.conv_out", int(cfg["out_channels"]), widths[0], 3)


def official_vae_manifest(config: Mapping[str, Any] | None = None) -> Shapes:
    """Key -> shape of `hunyuan_vae.safetensors` for `config` (diffusers names for the official fields; default:
    the release), written from Open-Sora's `AutoencoderKLCausal3D` constructors (see the module docstring)."""
    cfg = {**OFFICIAL_VAE_CONFIG, **(config or {})}
    spatial, temporal = int(cfg["spatial_compression_ratio"]), int(cfg["temporal_compression_ratio"])
    resample = _resamples(len(cfg["block_out_channels"]), spatial, temporal)
    latent = int(cfg["latent_channels"])
    keys = _encoder(cfg, resample) | _decoder(cfg, resample)
    keys["quant_conv.weight"], keys["quant_conv.bias"] = (2 * latent, 2 * latent, 1, 1, 1), (2 * latent,)
    keys["post_quant_conv.weight"], keys["post_quant_conv.bias"] = (latent, latent, 1, 1, 1), (latent,)
    return keys


def convert_vae_key(key: str) -> str:
    """The diffusers `AutoencoderKLHunyuanVideo` name of an official key: the same name (see the module docstring)."""
    return key


def meta_vae_shapes(config: Mapping[str, Any] | None = None) -> Shapes:
    """Key -> shape of diffusers `AutoencoderKLHunyuanVideo(**config)` built on the meta device (no memory)."""
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        model = AutoencoderKLHunyuanVideo(**{**OFFICIAL_VAE_CONFIG, **(config or {})})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_vae_checkpoint(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any] | None = None) -> Shapes:
    """Converts the names of a VAE checkpoint's key -> shape table and checks every key and shape against the
    diffusers VAE built on the meta device; returns the converted table.

    Raises:
        CheckpointMismatchError: a key is missing, unexpected or of the wrong shape (each named).
    """
    converted = {convert_vae_key(k): tuple(v) for k, v in shapes.items()}
    check_shapes(converted, meta_vae_shapes(config), "hunyuan_vae (AutoencoderKLHunyuanVideo)")
    return converted
