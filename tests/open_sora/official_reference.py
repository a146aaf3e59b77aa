"""Independent facts about the official Open-Sora 2.0 MMDiT, written from its source (`opensora/models/mmdit/`).

Two things live here, neither built from our port: the official state-dict manifest (BFL-style key -> shape,
generated from the config as in `MMDiTModel.__init__` with fused_qkv=False, qkv_bias=True, cond_embed=True,
guidance_embed=False) and a plain reference forward of the official math (Modulation chunks (shift, scale, gate),
QK RMSNorm, Liger rotate-half RoPE, txt-then-img joint attention, `LastLayer` with (shift, scale)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class OfficialConfig:
    in_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    patch_size: int = 2


def _linear(prefix: str, out_dim: int, in_dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_dim, in_dim), f"{prefix}.bias": (out_dim,)}


def official_manifest(cfg: OfficialConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `Open_Sora_v2.safetensors` for the given config."""
    h, head = cfg.hidden_size, cfg.hidden_size // cfg.num_heads
    mlp = int(h * cfg.mlp_ratio)
    keys: dict[str, tuple[int, ...]] = {}
    keys |= _linear("img_in", h, cfg.in_channels)
    keys |= _linear("time_in.in_layer", h, 256) | _linear("time_in.out_layer", h, h)
    keys |= _linear("vector_in.in_layer", h, cfg.vec_in_dim) | _linear("vector_in.out_layer", h, h)
    keys |= _linear("cond_in", h, cfg.in_channels + cfg.patch_size**2)
    keys |= _linear("txt_in", h, cfg.context_in_dim)
    for i in range(cfg.depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            keys |= _linear(f"{p}_mod.lin", 6 * h, h)
            for proj in ("q_proj", "k_proj", "v_proj", "proj"):
                keys |= _linear(f"{p}_attn.{proj}", h, h)
            keys[f"{p}_attn.norm.query_norm.scale"] = (head,)
            keys[f"{p}_attn.norm.key_norm.scale"] = (head,)
            keys |= _linear(f"{p}_mlp.0", mlp, h) | _linear(f"{p}_mlp.2", h, mlp)
    for j in range(cfg.depth_single_blocks):
        p = f"single_blocks.{j}"
        keys |= _linear(f"{p}.q_proj", h, h) | _linear(f"{p}.k_proj", h, h)
        keys |= _linear(f"{p}.v_mlp", h + mlp, h) | _linear(f"{p}.linear2", h, h + mlp)
        keys[f"{p}.norm.query_norm.scale"] = (head,)
        keys[f"{p}.norm.key_norm.scale"] = (head,)
        keys |= _linear(f"{p}.modulation.lin", 3 * h, h)
    keys |= _linear("final_layer.linear", cfg.in_channels, h)  # LastLayer(hidden, patch 1, out_channels)
    keys |= _linear("final_layer.adaLN_modulation.1", 2 * h, h)
    return keys


# ----------------------------------------------------------------------------- reference math


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000) -> torch.Tensor:
    t = 1000.0 * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def liger_rope_tables(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`LigerEmbedND`: per-axis cos/sin of pos * omega, concatenated, then repeated twice along channels."""
    cos_list, sin_list = [], []
    for i, dim in enumerate(axes_dim):
        omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        out = ids[:, i].double()[:, None] * omega[None]
        cos_list.append(out.cos())
        sin_list.append(out.sin())
    return torch.cat(cos_list, -1).repeat(1, 2).float(), torch.cat(sin_list, -1).repeat(1, 2).float()


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF-LLaMA / Liger rope on [B, H, L, D]: x * cos + rotate_half(x) * sin, rotate_half = cat(-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def lin(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def modulation(sd, prefix: str, vec: torch.Tensor, n: int) -> list[torch.Tensor]:
    return lin(sd, prefix, F.silu(vec))[:, None, :].chunk(n, dim=-1)


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, seq, _ = x.shape
    return x.reshape(b, seq, num_heads, -1).transpose(1, 2)  # B H L D


def attention(q, k, v, cos, sin) -> torch.Tensor:
    q, k = rope_rotate_half(q, cos, sin), rope_rotate_half(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def qkv(sd, prefix: str, x: torch.Tensor, num_heads: int):
    q = rms(heads(lin(sd, f"{prefix}.q_proj", x), num_heads), sd[f"{prefix}.norm.query_norm.scale"])
    k = rms(heads(lin(sd, f"{prefix}.k_proj", x), num_heads), sd[f"{prefix}.norm.key_norm.scale"])
    return q, k, heads(lin(sd, f"{prefix}.v_proj", x), num_heads)


def mlp(sd, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return lin(sd, f"{prefix}.2", F.gelu(lin(sd, f"{prefix}.0", x), approximate="tanh"))


def double_block(sd, p: str, img, txt, vec, cos, sin, num_heads: int):
    i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = modulation(sd, f"{p}.img_mod.lin", vec, 6)
    t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = modulation(sd, f"{p}.txt_mod.lin", vec, 6)
    iq, ik, iv = qkv(sd, f"{p}.img_attn", (1 + i_scale1) * layer_norm(img) + i_shift1, num_heads)
    tq, tk, tv = qkv(sd, f"{p}.txt_attn", (1 + t_scale1) * layer_norm(txt) + t_shift1, num_heads)
    out = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), cos, sin)
    txt_attn, img_attn = out[:, : txt.shape[1]], out[:, txt.shape[1] :]
    img = img + i_gate1 * lin(sd, f"{p}.img_attn.proj", img_attn)
    img = img + i_gate2 * mlp(sd, f"{p}.img_mlp", (1 + i_scale2) * layer_norm(img) + i_shift2)
    txt = txt + t_gate1 * lin(sd, f"{p}.txt_attn.proj", txt_attn)
    txt = txt + t_gate2 * mlp(sd, f"{p}.txt_mlp", (1 + t_scale2) * layer_norm(txt) + t_shift2)
    return img, txt


def single_block(sd, p: str, x, vec, cos, sin, num_heads: int, hidden: int):
    shift, scale, gate = modulation(sd, f"{p}.modulation.lin", vec, 3)
    x_mod = (1 + scale) * layer_norm(x) + shift
    q = rms(heads(lin(sd, f"{p}.q_proj", x_mod), num_heads), sd[f"{p}.norm.query_norm.scale"])
    k = rms(heads(lin(sd, f"{p}.k_proj", x_mod), num_heads), sd[f"{p}.norm.key_norm.scale"])
    v_mlp = lin(sd, f"{p}.v_mlp", x_mod)
    v, mlp_in = v_mlp[..., :hidden], v_mlp[..., hidden:]
    out = attention(q, k, heads(v, num_heads), cos, sin)
    out = lin(sd, f"{p}.linear2", torch.cat([out, F.gelu(mlp_in, approximate="tanh")], dim=2))
    return x + gate * out


def embed(sd, img, txt, y_vec, t, cond):
    img = lin(sd, "img_in", img) + lin(sd, "cond_in", cond)
    vec = lin(sd, "time_in.out_layer", F.silu(lin(sd, "time_in.in_layer", timestep_embedding(t))))
    vec = vec + lin(sd, "vector_in.out_layer", F.silu(lin(sd, "vector_in.in_layer", y_vec)))
    return img, lin(sd, "txt_in", txt), vec


def final_layer(sd, x, vec):
    shift, scale = lin(sd, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=1)
    return lin(sd, "final_layer.linear", (1 + scale[:, None]) * layer_norm(x) + shift[:, None])


def forward(sd, cfg: OfficialConfig, img, img_ids, txt, txt_ids, t, y_vec, cond) -> torch.Tensor:
    """`MMDiTModel.forward_ckpt` for the given state dict."""
    img, txt, vec = embed(sd, img, txt, y_vec, t, cond)
    cos, sin = liger_rope_tables(torch.cat([txt_ids, img_ids]), cfg.axes_dim, cfg.theta)
    for i in range(cfg.depth):
        img, txt = double_block(sd, f"double_blocks.{i}", img, txt, vec, cos, sin, cfg.num_heads)
    x = torch.cat([txt, img], dim=1)
    for j in range(cfg.depth_single_blocks):
        x = single_block(sd, f"single_blocks.{j}", x, vec, cos, sin, cfg.num_heads, cfg.hidden_size)
    return final_layer(sd, x[:, txt.shape[1] :], vec)
