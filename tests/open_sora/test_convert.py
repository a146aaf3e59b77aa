"""The converter against an independent manifest of the official checkpoint (full size, on the meta device)."""

from __future__ import annotations

import math

import pytest
import torch

from erasure_core.pipelines.open_sora import (
    OpenSoraTransformer3DModel,
    convert_open_sora_checkpoint,
    convert_open_sora_lora,
)

from .official_reference import OfficialConfig, official_manifest
from .tiny_components import TINY, random_official_state_dict, transformer_config

# diffusers FluxTransformer2DModel without guidance embedder (11,891,178,560) + cond_in (68 * 3072 + 3072).
OPEN_SORA_2_PARAMETERS = 11_891_178_560 + 211_968


@pytest.fixture(scope="module")
def full_manifest() -> dict[str, tuple[int, ...]]:
    return official_manifest(OfficialConfig())


@pytest.fixture(scope="module")
def meta_model() -> OpenSoraTransformer3DModel:
    with torch.device("meta"):
        return OpenSoraTransformer3DModel()


def test_official_manifest_counts_11_89b(full_manifest):
    total = sum(math.prod(shape) for shape in full_manifest.values())
    assert total == OPEN_SORA_2_PARAMETERS == 11_891_390_528
    assert abs(total / 1e9 - 11.89) < 0.005


def test_full_size_model_counts_the_same(meta_model):
    total = sum(p.numel() for p in meta_model.parameters())
    assert total == OPEN_SORA_2_PARAMETERS


def test_every_official_key_converts_to_a_matching_shape(full_manifest, meta_model):
    official = {key: torch.empty(shape, device="meta") for key, shape in full_manifest.items()}
    converted = convert_open_sora_checkpoint(official)
    ours = meta_model.state_dict()
    assert set(converted) == set(ours)
    mismatched = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in converted.items() if v.shape != ours[k].shape}
    assert not mismatched
    assert sum(v.numel() for v in converted.values()) == OPEN_SORA_2_PARAMETERS


def test_unknown_keys_are_rejected():
    state = random_official_state_dict()
    state["guidance_in.in_layer.weight"] = torch.zeros(TINY.hidden_size, 256)
    with pytest.raises(ValueError, match="guidance_in"):
        convert_open_sora_checkpoint(state)


def test_final_modulation_halves_are_swapped():
    state = random_official_state_dict()
    converted = convert_open_sora_checkpoint(state)
    shift, scale = state["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(converted["norm_out.linear.weight"], torch.cat([scale, shift]))
    # Block modulations keep BFL's (shift, scale, gate) order, which diffusers' AdaLayerNormZero shares.
    assert torch.equal(
        converted["transformer_blocks.0.norm1.linear.weight"], state["double_blocks.0.img_mod.lin.weight"]
    )


def _lora(module: str, out_dim: int, in_dim: int, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"base_model.model.{module}.lora_A.weight": torch.randn(rank, in_dim, generator=gen),
        f"base_model.model.{module}.lora_B.weight": torch.randn(out_dim, rank, generator=gen),
    }


def test_lora_converts_and_loads_with_the_same_delta():
    """A LoRA on official names, applied to official weights, equals the converted LoRA on the converted model."""
    gen = torch.Generator().manual_seed(0)
    h, mlp = TINY.hidden_size, 4 * TINY.hidden_size
    lora = _lora("double_blocks.0.txt_attn.q_proj", h, h, 4, gen)
    lora |= _lora("double_blocks.0.txt_attn.k_proj", h, h, 4, gen)
    lora |= _lora("single_blocks.0.v_mlp", h + mlp, h, 4, gen)
    lora |= _lora("final_layer.adaLN_modulation.1", 2 * h, h, 4, gen)
    converted = convert_open_sora_lora(lora, hidden_size=h)
    assert "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight" in converted
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in converted

    official = random_official_state_dict()
    merged = dict(official)
    for key in [k for k in lora if k.endswith("lora_A.weight")]:
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        delta = lora[key.replace("lora_A", "lora_B")] @ lora[key]
        merged[f"{module}.weight"] = official[f"{module}.weight"] + delta
    expected = convert_open_sora_checkpoint(merged)

    torch.manual_seed(0)
    model = OpenSoraTransformer3DModel(**transformer_config())
    model.load_state_dict(convert_open_sora_checkpoint(official))
    model.load_lora_adapter(converted, prefix="transformer", adapter_name="erase")
    model.fuse_lora(lora_scale=1.0)
    # peft's default alpha equals the rank here (lora_alpha=r from the state dict), so the scale is 1.
    fused = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for key, value in expected.items():
        torch.testing.assert_close(fused[key], value, rtol=1e-5, atol=1e-5, msg=key)


def test_bad_lora_key_is_rejected():
    with pytest.raises(ValueError, match="not a LoRA"):
        convert_open_sora_lora({"double_blocks.0.txt_attn.q_proj.weight": torch.zeros(1)}, hidden_size=32)


def test_lora_scale_zero_gives_the_base_model():
    gen = torch.Generator().manual_seed(4)
    h = TINY.hidden_size
    lora = _lora("double_blocks.0.txt_attn.q_proj", h, h, 2, gen) | _lora(
        "double_blocks.0.txt_attn.k_proj", h, h, 2, gen
    )
    torch.manual_seed(0)
    model = OpenSoraTransformer3DModel(**transformer_config()).eval()
    inputs = {
        "hidden_states": torch.randn(1, 4, TINY.in_channels, generator=gen),
        "encoder_hidden_states": torch.randn(1, 3, TINY.context_in_dim, generator=gen),
        "pooled_projections": torch.randn(1, TINY.vec_in_dim, generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]).float(),
        "txt_ids": torch.zeros(3, 3),
    }
    with torch.no_grad():
        base = model(**inputs).sample
        model.load_lora_adapter(convert_open_sora_lora(lora, hidden_size=h), prefix="transformer")
        with_lora = model(**inputs).sample
        scaled_off = model(**inputs, joint_attention_kwargs={"scale": 0.0}).sample
        again = model(**inputs).sample
    assert not torch.allclose(with_lora, base, atol=1e-4)
    torch.testing.assert_close(scaled_off, base)
    torch.testing.assert_close(again, with_lora)


def test_load_from_official_single_file(tmp_path):
    from safetensors.torch import save_file

    from erasure_core.pipelines.open_sora import load_open_sora_transformer

    official = random_official_state_dict()
    save_file(official, str(tmp_path / "Open_Sora_v2.safetensors"))
    model = load_open_sora_transformer(
        tmp_path / "Open_Sora_v2.safetensors", torch_dtype=torch.float32, **transformer_config()
    )
    expected = convert_open_sora_checkpoint(official)
    state = model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
