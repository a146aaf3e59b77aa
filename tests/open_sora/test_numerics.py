"""The port against a plain re-implementation of Open-Sora 2.0's official math, on converted random weights."""

from __future__ import annotations

import pytest
import torch

from erasure_core.pipelines.open_sora import OpenSoraTransformer3DModel, convert_open_sora_checkpoint
from erasure_core.pipelines.open_sora.pipeline_open_sora import video_ids

from . import official_reference as ref
from .tiny_components import TINY, random_official_state_dict, transformer_config

FRAMES, HEIGHT, WIDTH, TEXT = 3, 2, 3, 5


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return random_official_state_dict(TINY, seed=3)


@pytest.fixture(scope="module")
def model(official) -> OpenSoraTransformer3DModel:
    model = OpenSoraTransformer3DModel(**transformer_config())
    model.load_state_dict(convert_open_sora_checkpoint(official))
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    seq = FRAMES * HEIGHT * WIDTH
    return {
        "img": torch.randn(2, seq, TINY.in_channels, generator=gen),
        "txt": torch.randn(2, TEXT, TINY.context_in_dim, generator=gen),
        "y_vec": torch.randn(2, TINY.vec_in_dim, generator=gen),
        "t": torch.tensor([0.3, 0.85]),
        "cond": torch.randn(2, seq, TINY.in_channels + TINY.patch_size**2, generator=gen),
        "img_ids": video_ids(FRAMES, HEIGHT, WIDTH, torch.device("cpu"), torch.float32),
        "txt_ids": torch.zeros(TEXT, 3),
    }


def _rope(inputs):
    return ref.liger_rope_tables(torch.cat([inputs["txt_ids"], inputs["img_ids"]]), TINY.axes_dim, TINY.theta)


def _temb(model, inputs) -> torch.Tensor:
    return model.time_text_embed(inputs["t"] * 1000, inputs["y_vec"])


@torch.no_grad()
def test_double_block_matches_official_math(official, model, inputs):
    img, txt, vec = ref.embed(official, inputs["img"], inputs["txt"], inputs["y_vec"], inputs["t"], inputs["cond"])
    cos, sin = _rope(inputs)
    want_img, want_txt = ref.double_block(official, "double_blocks.0", img, txt, vec, cos, sin, TINY.num_heads)

    temb = _temb(model, inputs)
    torch.testing.assert_close(temb, vec, rtol=1e-5, atol=1e-5)
    rotary = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]]))
    got_txt, got_img = model.transformer_blocks[0](img, txt, temb, rotary)
    torch.testing.assert_close(got_img, want_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_txt, want_txt, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_single_block_matches_official_math(official, model, inputs):
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(2, FRAMES * HEIGHT * WIDTH, TINY.hidden_size, generator=gen)
    txt = torch.randn(2, TEXT, TINY.hidden_size, generator=gen)
    vec = _temb(model, inputs)
    cos, sin = _rope(inputs)
    want = ref.single_block(
        official, "single_blocks.0", torch.cat([txt, img], 1), vec, cos, sin, TINY.num_heads, TINY.hidden_size
    )
    rotary = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]]))
    got_txt, got_img = model.single_transformer_blocks[0](img, txt, vec, rotary)
    torch.testing.assert_close(torch.cat([got_txt, got_img], 1), want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_full_forward_matches_official_math(official, model, inputs):
    names = ("img", "img_ids", "txt", "txt_ids", "t", "y_vec", "cond")
    want = ref.forward(official, TINY, *(inputs[name] for name in names))
    got = model(
        hidden_states=inputs["img"],
        encoder_hidden_states=inputs["txt"],
        pooled_projections=inputs["y_vec"],
        timestep=inputs["t"],
        img_ids=inputs["img_ids"],
        txt_ids=inputs["txt_ids"],
        cond_hidden_states=inputs["cond"],
    ).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_missing_condition_equals_zero_condition(model, inputs):
    common = {
        "hidden_states": inputs["img"],
        "encoder_hidden_states": inputs["txt"],
        "pooled_projections": inputs["y_vec"],
        "timestep": inputs["t"],
        "img_ids": inputs["img_ids"],
        "txt_ids": inputs["txt_ids"],
    }
    zero = model(**common, cond_hidden_states=torch.zeros_like(inputs["cond"])).sample
    torch.testing.assert_close(model(**common).sample, zero, rtol=0, atol=1e-6)


@torch.no_grad()
def test_rotate_half_equals_interleaved_on_permuted_channels(inputs):
    """open-sora-2.md section 4: option 1 (permute rows, interleaved RoPE) equals option 2 (rotate-half) up to the
    channel permutation, and the unpermuted interleaved layout (BFL / diffusers Flux) gives another answer."""
    cos, sin = _rope(inputs)
    q = torch.randn(1, 1, cos.shape[0], cos.shape[1])
    half = ref.rope_rotate_half(q, cos, sin)
    # Interleaved rope on the per-head permuted channels (new[2d] = old[d], new[2d+1] = old[d + D/2]) is the same map.
    d = q.shape[-1] // 2
    perm = torch.stack([torch.arange(d), torch.arange(d) + d], dim=-1).flatten()
    x = q[..., perm]
    c, s = cos[:, :d].repeat_interleave(2, -1), sin[:, :d].repeat_interleave(2, -1)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    interleaved = x * c + torch.stack([-imag, real], -1).flatten(-2) * s
    torch.testing.assert_close(interleaved, half[..., perm])
    assert not torch.allclose(interleaved, half, atol=1e-3)
