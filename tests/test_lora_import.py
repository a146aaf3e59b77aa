"""The LoRA parser (`erasure_core.lora_import`) and the `import` method on the demo engine."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from erasure_core.concepts import ConceptSpec
from erasure_core.errors import InvalidConfigError, InvalidLoraError
from erasure_core.lora_import import parse_lora, read_lora_bytes, resolve_import_path


def test_peft_keys_with_and_without_prefix_and_alpha(demo_engine) -> None:
    model = demo_engine.pipe.transformer
    a, b = torch.randn(3, 128), torch.randn(128, 3)
    lora = parse_lora(
        {
            "transformer.transformer_blocks.1.attn.add_k_proj.lora_A.weight": a,
            "transformer.transformer_blocks.1.attn.add_k_proj.lora_B.weight": b,
            "transformer.transformer_blocks.1.attn.add_k_proj.alpha": torch.tensor(6.0),
            "context_embedder.lora_A.weight": torch.randn(2, 384, dtype=torch.float16),
            "context_embedder.lora_B.weight": torch.randn(128, 2, dtype=torch.bfloat16),
        },
        model,
    )
    assert lora.format == "peft"
    assert set(lora.deltas) == {"transformer_blocks.1.attn.add_k_proj", "context_embedder"}
    delta = lora.deltas["transformer_blocks.1.attn.add_k_proj"]
    assert delta.scale == 2.0 and torch.equal(delta.A, a) and torch.equal(delta.B, b)
    assert lora.deltas["context_embedder"].scale == 1.0 and lora.deltas["context_embedder"].A.dtype == torch.float32


def test_kohya_single_block_linear1_splits_by_module_sizes(demo_engine) -> None:
    model = demo_engine.pipe.transformer
    block = model.single_transformer_blocks[1]
    outs = [block.attn.to_q.out_features, block.attn.to_k.out_features, block.attn.to_v.out_features]
    outs.append(block.proj_mlp.out_features)
    down, up = torch.randn(4, 128), torch.randn(sum(outs), 4)
    down2, up2 = torch.randn(4, block.proj_out.in_features), torch.randn(128, 4)
    lora = parse_lora(
        {
            "lora_unet_single_blocks_1_linear1.lora_down.weight": down,
            "lora_unet_single_blocks_1_linear1.lora_up.weight": up,
            "lora_unet_single_blocks_1_linear1.alpha": torch.tensor(1.0),
            "lora_unet_single_blocks_1_linear2.lora_down.weight": down2,
            "lora_unet_single_blocks_1_linear2.lora_up.weight": up2,
        },
        model,
    )
    assert lora.format == "kohya"
    names = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    fused = torch.cat([lora.deltas[f"single_transformer_blocks.1.{n}"].dense() for n in names])
    assert torch.allclose(fused, 0.25 * up @ down, atol=1e-6)
    assert torch.equal(lora.deltas["single_transformer_blocks.1.proj_out"].dense(), up2 @ down2)


@pytest.mark.parametrize(
    ("tensors", "word"),
    [
        ({"transformer.context_embedder.lora_A.weight": torch.randn(2, 384)}, "no lora_B"),
        ({"context_embedder.alpha": torch.tensor(1.0)}, "context_embedder.alpha"),
        ({"lora_te1_text_model_encoder.lora_down.weight": torch.randn(2, 4)}, "text-encoder"),
        (
            {
                "context_embedder.lora_A.weight": torch.randn(2, 384),
                "context_embedder.lora_B.weight": torch.randn(128, 3),
            },
            "rank",
        ),
        (
            {"norm_out.lora_A.weight": torch.randn(2, 128), "norm_out.lora_B.weight": torch.randn(256, 2)},
            "not a Linear",
        ),
        (
            {
                "context_embedder.lora_A.weight": torch.ones(2, 384, dtype=torch.int32),
                "context_embedder.lora_B.weight": torch.randn(128, 2),
            },
            "floating-point",
        ),
        ({"context_embedder.lora_down.weight": torch.randn(2, 384)}, "context_embedder.lora_down.weight"),
        ({}, "no tensors"),
    ],
)
def test_refusals_name_the_key(demo_engine, tensors: dict, word: str) -> None:
    with pytest.raises(InvalidLoraError, match=word.replace(".", r"\.")):
        parse_lora(tensors, demo_engine.pipe.transformer)


def test_payload_and_path_checks(tmp_path: Path) -> None:
    with pytest.raises(InvalidLoraError, match="safetensors"):
        read_lora_bytes(b"\xff" * 64)
    folder = tmp_path / "imports"
    folder.mkdir()
    (folder / "ok.safetensors").write_bytes(save({"x": torch.zeros(1)}))
    (tmp_path / "secret.safetensors").write_bytes(b"outside")
    (folder / "up.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (folder / "sub").mkdir()
    assert resolve_import_path(folder, "ok.safetensors") == (folder / "ok.safetensors").resolve()
    for name in ("../secret.safetensors", str(tmp_path / "secret.safetensors"), "up.safetensors", "ok.bin", "sub"):
        with pytest.raises(InvalidConfigError):
            resolve_import_path(folder, name)


def test_import_method_on_the_engine(demo_engine) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 128, generator=gen) * 0.1, torch.randn(128, 4, generator=gen)
    state = {
        "transformer_blocks.0.attn.add_v_proj.lora_A.weight": a,
        "transformer_blocks.0.attn.add_v_proj.lora_B.weight": b,
    }
    options = {"lora_b64": base64.b64encode(save(state)).decode()}
    artifact = demo_engine.erase(ConceptSpec(concept="circle"), method="import", options=options)
    assert artifact.metadata["method"] == "import"
    assert artifact.metadata["base_model"]["layer_hash"] == demo_engine.layer_hash
    assert set(artifact.deltas) == {"transformer_blocks.0.attn.add_v_proj"}
    assert set(artifact.to_diffusers_lora()) == {f"transformer.{k}" for k in state}
