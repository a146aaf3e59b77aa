"""Open-Sora 2.0's MMDiT as a diffusers model: Flux blocks, 3D (t, h, w) RoPE in rotate-half layout, `cond_in`.

Open-Sora 2.0 (hpcaitech/Open-Sora, `opensora/models/mmdit/`) is FLUX.1's architecture with four differences, and
this port reuses diffusers' Flux building blocks for everything else so that module names match
`FluxTransformer2DModel` (`context_embedder`, `time_text_embed.text_embedder.linear_1`,
`transformer_blocks.{i}.attn.add_q_proj`, ...) and the project's Flux erasure code works unchanged:

1. Positions are (t, h, w) per packed token instead of Flux's (image index, h, w); text positions stay zero.
2. RoPE runs through Liger's kernel in the HF-LLaMA *rotate-half* layout: channel d of a head pairs with d + D/2,
   and cos/sin hold the concatenated per-axis frequencies repeated twice. The official weights were trained with it,
   so this port keeps their row order and applies rotate-half RoPE (`OpenSoraAttnProcessor`); LoRA weights trained
   on the official model therefore load without any permutation.
3. `cond_embedder` (official `cond_in`): Linear(in_channels + patch_size**2 -> hidden) over the packed
   [mask, masked reference latents] condition, added to the image embedding. Absent means zero condition.
4. The checkpoint splits q/k/v (see `convert_open_sora.py`); in memory the layout is diffusers Flux's.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux import (
    FluxAttention,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from diffusers.utils import scale_lora_layers, unscale_lora_layers
from torch import nn

logger = logging.getLogger(__name__)


class OpenSoraAttnProcessor:
    """Flux joint attention with Open-Sora's rotate-half RoPE (pairs channel d with d + head_dim / 2)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: FluxAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        value = attn.to_v(hidden_states).unflatten(-1, (-1, attn.head_dim))

        if encoder_hidden_states is not None:
            # Text tokens come first in the joint sequence, as in Open-Sora's `torch.cat((txt_q, img_q))`.
            txt_q = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            txt_k = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            txt_v = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([txt_q, query], dim=1)
            key = torch.cat([txt_k, key], dim=1)
            value = torch.cat([txt_v, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real_unbind_dim=-2, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, use_real_unbind_dim=-2, sequence_dim=1)

        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        txt_len = encoder_hidden_states.shape[1]
        txt_out, img_out = out[:, :txt_len], out[:, txt_len:]
        img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
        return img_out, attn.to_add_out(txt_out.contiguous())


class OpenSoraPosEmbed(nn.Module):
    """N-D RoPE tables in Liger's rotate-half layout: cat over axes of cos(pos * omega), repeated twice.

    For axes_dim [16, 56, 56] a head's 128 channels see [t(8), h(28), w(28), t(8), h(28), w(28)] frequencies,
    matching Open-Sora's `LigerEmbedND` (`torch.cat(cos_list, -1).repeat(1, 1, 2)`).
    """

    def __init__(self, theta: int, axes_dim: list[int]) -> None:
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"ids must have shape [seq, {len(self.axes_dim)}], got {tuple(ids.shape)}")
        freqs_dtype = torch.float32 if ids.device.type == "mps" else torch.float64
        pos = ids.to(freqs_dtype)
        angles = []
        for i, dim in enumerate(self.axes_dim):
            omega = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=freqs_dtype, device=ids.device) / dim))
            angles.append(pos[:, i, None] * omega[None, :])
        angle = torch.cat(angles, dim=-1)
        cos = angle.cos().float().repeat(1, 2)
        sin = angle.sin().float().repeat(1, 2)
        return cos, sin


class OpenSoraTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The Open-Sora 2.0 MMDiT (11.9B at the defaults) with diffusers Flux module names.

    Args:
        patch_size (`int`, defaults to 2): spatial patch of the packing; `in_channels` = latent channels * patch**2.
        in_channels (`int`, defaults to 64): packed latent channels per token.
        out_channels (`int`, *optional*): defaults to `in_channels`.
        num_layers (`int`, defaults to 19): double-stream blocks.
        num_single_layers (`int`, defaults to 38): single-stream blocks.
        attention_head_dim (`int`, defaults to 128): must equal `sum(axes_dims_rope)`.
        num_attention_heads (`int`, defaults to 24).
        joint_attention_dim (`int`, defaults to 4096): per-token text width (T5-XXL).
        pooled_projection_dim (`int`, defaults to 768): pooled text width (CLIP-L).
        axes_dims_rope (`tuple[int]`, defaults to (16, 56, 56)): RoPE channels per (t, h, w) axis.
        rope_theta (`int`, defaults to 10000).
        cond_embeds (`bool`, defaults to True): whether the model has `cond_embedder` (official `cond_in`).
        sample_size (`int`, defaults to 32): native latent height/width (32 -> 256 px with the 8x Hunyuan VAE).
        sample_frames (`int`, defaults to 33): native latent frames (33 -> 129 frames with the 4x Hunyuan VAE).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
        rope_theta: int = 10000,
        cond_embeds: bool = True,
        sample_size: int = 32,
        sample_frames: int = 33,
    ) -> None:
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim or any(d % 2 for d in axes_dims_rope):
            raise ValueError(
                f"axes_dims_rope {list(axes_dims_rope)} must be even and sum to attention_head_dim "
                f"({attention_head_dim})"
            )
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        self.pos_embed = OpenSoraPosEmbed(theta=rope_theta, axes_dim=list(axes_dims_rope))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            embedding_dim=self.inner_dim, pooled_projection_dim=pooled_projection_dim
        )
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)
        self.cond_embedder = nn.Linear(in_channels + patch_size**2, self.inner_dim) if cond_embeds else None

        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                FluxSingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                for _ in range(num_single_layers)
            ]
        )
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            block.attn.set_processor(OpenSoraAttnProcessor())

        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        # Open-Sora's final layer is built with patch size 1: it maps back to the packed channels.
        self.proj_out = nn.Linear(self.inner_dim, self.out_channels, bias=True)
        self.gradient_checkpointing = False

    def _embed_image(self, hidden_states: torch.Tensor, cond_hidden_states: torch.Tensor | None) -> torch.Tensor:
        hidden_states = self.x_embedder(hidden_states)
        if self.cond_embedder is None:
            if cond_hidden_states is not None:
                raise ValueError("cond_hidden_states given but the model has no cond_embedder (cond_embeds=False)")
            return hidden_states
        if cond_hidden_states is None:
            # A zero condition (pure text-to-video) embeds to the bias alone: Linear(0) = b.
            return hidden_states + self.cond_embedder.bias.to(hidden_states.dtype)
        expected = (*hidden_states.shape[:2], self.cond_embedder.in_features)
        if tuple(cond_hidden_states.shape) != expected:
            raise ValueError(f"cond_hidden_states must have shape {expected}, got {tuple(cond_hidden_states.shape)}")
        return hidden_states + self.cond_embedder(cond_hidden_states)

    def _run_block(self, block: nn.Module, hidden_states, encoder_hidden_states, temb, rotary_emb, attn_kwargs):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(
                block, hidden_states, encoder_hidden_states, temb, rotary_emb, attn_kwargs
            )
        return block(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            temb=temb,
            image_rotary_emb=rotary_emb,
            joint_attention_kwargs=attn_kwargs,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        cond_hidden_states: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predicts the rectified-flow velocity of packed video latents.

        Args:
            hidden_states (`torch.Tensor`): packed latents [B, T*H*W, in_channels].
            encoder_hidden_states (`torch.Tensor`): per-token text states [B, L, joint_attention_dim].
            pooled_projections (`torch.Tensor`): pooled text vector [B, pooled_projection_dim].
            timestep (`torch.Tensor`): flow time in [0, 1], shape [B] (scaled by 1000 inside, as in Open-Sora).
            img_ids (`torch.Tensor`): integer (t, h, w) position per image token, [T*H*W, 3].
            txt_ids (`torch.Tensor`): text positions (zeros), [L, 3].
            cond_hidden_states (`torch.Tensor`, *optional*): packed [mask, masked reference latents],
                [B, T*H*W, in_channels + patch_size**2]; None means the zero condition.
            joint_attention_kwargs (`dict`, *optional*): passed to the attention processors, except "scale" (the
                peft LoRA scale for this call).
            return_dict (`bool`): return a `Transformer2DModelOutput` instead of a tuple.
        """
        if img_ids.ndim != 2 or txt_ids.ndim != 2:
            raise ValueError("img_ids and txt_ids must be 2D [seq, 3] tensors (no batch dimension)")
        attn_kwargs = dict(joint_attention_kwargs or {})
        lora_scale = attn_kwargs.pop("scale", 1.0)
        if lora_scale != 1.0:
            scale_lora_layers(self, lora_scale)
        try:
            image = self._embed_image(hidden_states, cond_hidden_states)
            temb = self.time_text_embed(timestep.to(image.dtype) * 1000, pooled_projections)
            text = self.context_embedder(encoder_hidden_states)
            rotary_emb = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))
            for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
                text, image = self._run_block(block, image, text, temb, rotary_emb, attn_kwargs)
            output = self.proj_out(self.norm_out(image, temb))
        finally:
            if lora_scale != 1.0:
                unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
