"""A tiny random OpenSoraPipeline end to end: shapes, sampler facts, guidance batch and save/load round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from erasure_core.families.open_sora import OPEN_SORA
from erasure_core.pipelines.open_sora import OpenSoraPipeline, decorate_prompt
from erasure_core.pipelines.open_sora.pipeline_open_sora import oscillated

from .tiny_components import TEXT_LENGTH, TINY, tiny_pipeline

CALL = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def pipe() -> OpenSoraPipeline:
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, output_type="pt", seed=0, **kwargs):
    call = {**CALL, **kwargs}
    return pipe("a red square", generator=torch.Generator().manual_seed(seed), output_type=output_type, **call).frames


def test_generates_a_video_of_the_right_shape(pipe):
    video = _run(pipe)
    assert video.shape == (1, 5, 3, 32, 32)  # (F - 1) / 4 + 1 = 2 latent frames decode to 5
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    assert _run(pipe, output_type="latent").shape == (1, 4, 2, 4, 4)
    assert _run(pipe, output_type="np").shape == (1, 5, 32, 32, 3)
    frames = _run(pipe, output_type="pil")
    assert len(frames) == 1 and len(frames[0]) == 5 and frames[0][0].size == (32, 32)


def test_same_seed_same_video_and_other_seed_differs(pipe):
    first, again, other = _run(pipe, "latent", 0), _run(pipe, "latent", 0), _run(pipe, "latent", 1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_defaults_come_from_the_loaded_model(pipe):
    assert pipe.native_size == (32, 32)  # sample_size 4 latents * 8x VAE
    assert pipe.native_num_frames == 5  # (sample_frames 2 - 1) * 4 + 1
    assert pipe.default_max_sequence_length == TEXT_LENGTH
    assert _run(pipe, "latent", height=None, width=None, num_frames=None).shape == (1, 4, 2, 4, 4)


def test_schedule_is_open_soras_shifted_rectified_flow(pipe):
    steps, frames, tokens_per_frame = 6, 3, 2 * 3
    pipe._set_timesteps(steps, (1, 4, frames, 4, 6), torch.device("cpu"))
    # Open-Sora get_schedule: alpha = lin(256 -> 1, 4096 -> 3)(tokens per frame) * sqrt(latent frames).
    alpha = (1 + (3 - 1) / (4096 - 256) * (tokens_per_frame - 256)) * math.sqrt(frames)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    expected = alpha * t / (1 + (alpha - 1) * t)
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), expected, rtol=1e-6, atol=1e-6)


def test_three_pass_guidance_batch_with_zero_condition(pipe):
    seen = []

    def record(module, args, kwargs):
        seen.append({k: kwargs[k].clone() for k in ("hidden_states", "encoder_hidden_states", "cond_hidden_states")})

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(pipe, "latent", negative_prompt="blurry")
    finally:
        handle.remove()
    assert len(seen) == CALL["num_inference_steps"]
    x, text, cond = seen[0]["hidden_states"], seen[0]["encoder_hidden_states"], seen[0]["cond_hidden_states"]
    assert x.shape == (3, 2 * 2 * 2, TINY.in_channels) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert not torch.equal(text[0], text[1]) and torch.equal(text[1], text[2])  # (prompt, negative, negative)
    assert cond.shape == (3, 8, TINY.in_channels + 4) and not cond.any()


def test_text_guidance_one_equals_conditional_prediction(pipe):
    """With g_txt = 1 and a zero image condition, v = u2 + g_img (u - u2) + (c - u) = c for any g_img."""
    a = _run(pipe, "latent", guidance_scale=1.0, image_guidance_scale=3.0)
    b = _run(pipe, "latent", guidance_scale=1.0, image_guidance_scale=7.0, negative_prompt="other")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_guidance_oscillation_matches_open_sora():
    # get_oscillation_gs: the scale before step 10 and on even steps, 1 on odd steps from 10.
    assert [oscillated(7.5, True, i) for i in (0, 9, 10, 11, 12, 13)] == [7.5, 7.5, 7.5, 1.0, 7.5, 1.0]
    assert oscillated(7.5, False, 11) == 7.5


def test_prompt_suffix_matches_open_sora():
    assert decorate_prompt("a cat") == "a cat. 24 FPS. 4 motion score."
    assert decorate_prompt("a cat. 16 FPS.", motion_score=7) == "a cat. 16 FPS. 7 motion score."
    assert decorate_prompt("a cat", fps=None, motion_score=None) == "a cat"
    with pytest.raises(ValueError, match="dynamic"):
        decorate_prompt("a cat", motion_score="dynamic")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 24}, "multiples of 16"),
        ({"num_frames": 6}, "1 \\+ a multiple of 4"),
        ({"output_type": "gif"}, "output_type"),
    ],
)
def test_bad_inputs_fail_early(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _run(pipe, **{"output_type": "latent", **kwargs})


def test_save_and_load_round_trip(pipe, tmp_path):
    before = _run(pipe)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "OpenSoraPipeline"
    assert index["transformer"] == [
        "erasure_core.pipelines.open_sora.transformer_open_sora",
        "OpenSoraTransformer3DModel",
    ]
    loaded = OpenSoraPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_run(loaded), before)


def test_family_encodes_through_the_pipeline_and_finds_its_layers(pipe):
    encoded = OPEN_SORA.encode(pipe, ["a red square", "a blue circle"])
    assert encoded["tokens"].shape == (2, TEXT_LENGTH, TINY.context_in_dim)
    assert encoded["pooled"].shape == (2, TINY.vec_in_dim)
    modules = dict(pipe.transformer.named_modules())
    for space in OPEN_SORA.text_spaces:
        width = encoded[space.name].shape[-1]
        assert all(modules[layer].in_features == width for layer in space.layers)
    targets = OPEN_SORA.resolve_lora_targets(pipe.transformer, "text_qk")
    assert targets == ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj"]
    assert OPEN_SORA.native_size(pipe) == (32, 32)
    assert OPEN_SORA.default_max_sequence_length(pipe) == TEXT_LENGTH


def test_prompt_embeds_path_matches_prompt_path(pipe):
    tokens, pooled = pipe.encode_prompt([decorate_prompt("a red square")])
    direct = pipe(
        prompt_embeds=tokens,
        pooled_prompt_embeds=pooled,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **CALL,
    ).frames
    assert np.allclose(direct.numpy(), _run(pipe, "latent").numpy())


def test_pipeline_loads_open_sora_and_diffusers_lora_layouts():
    pipe = tiny_pipeline()
    gen = torch.Generator().manual_seed(0)
    h = TINY.hidden_size
    official = {
        "base_model.model.double_blocks.0.txt_attn.q_proj.lora_A.weight": torch.randn(2, h, generator=gen),
        "base_model.model.double_blocks.0.txt_attn.q_proj.lora_B.weight": torch.randn(h, 2, generator=gen),
    }
    pipe.load_lora_weights(official, adapter_name="open_sora")
    diffusers_layout = {
        "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight": torch.randn(2, h, generator=gen),
        "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.weight": torch.randn(h, 2, generator=gen),
    }
    pipe.load_lora_weights(diffusers_layout, adapter_name="diffusers")
    attn = pipe.transformer.transformer_blocks[0].attn
    assert "open_sora" in attn.add_q_proj.lora_A and "diffusers" in attn.add_k_proj.lora_A
    pipe.unload_lora_weights()
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.add_q_proj, torch.nn.Linear)
