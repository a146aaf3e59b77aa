"""The converter against an independent manifest of the official checkpoint (full size, on the meta device)."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from erasure_core.pipelines.open_sora import (
    OpenSoraTransformer3DModel,
    convert_open_sora_checkpoint,
    convert_open_sora_lora,
)
from erasure_core.pipelines.open_sora.assemble import (
    ConversionError,
    ReleaseInputs,
    assemble_open_sora,
    inspect_encoder,
    read_safetensors_header,
)
from erasure_core.pipelines.open_sora.convert_open_sora import (
    CheckpointMismatchError,
    check_open_sora_checkpoint,
    meta_transformer_shapes,
    official_module_name,
    official_shapes,
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


# ----------------------------------------------------------------------------- `erasure convert open-sora`


def test_the_full_size_check_names_official_keys(full_manifest):
    check_open_sora_checkpoint(full_manifest)  # the independent manifest passes at full size (meta device)
    assert official_shapes(meta_transformer_shapes()) == full_manifest
    bad = dict(full_manifest)
    bad.pop("double_blocks.18.txt_attn.k_proj.bias")
    bad["guidance_in.in_layer.weight"] = (3072, 256)
    bad["single_blocks.37.v_mlp.weight"] = (3072 + 12288, 3071)
    with pytest.raises(CheckpointMismatchError) as error:
        check_open_sora_checkpoint(bad)
    message = str(error.value)
    assert "1 missing key(s): double_blocks.18.txt_attn.k_proj.bias" in message
    assert "1 unexpected key(s): guidance_in.in_layer.weight" in message
    assert "single_blocks.37.v_mlp.weight has shape [15360, 3071], expected [15360, 3072]" in message


def _sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> Path:
    """A safetensors file with a real header and holes for data: full size on paper, nothing allocated."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
    os.truncate(path, 8 + len(blob) + offset)
    return path


def _config_only_encoder(path: Path, config: dict, tokenizer_source: Path, key: str = "shared.weight") -> Path:
    """An encoder folder with the release's config widths, a tiny sparse weight file and a loadable tokenizer."""
    from transformers import AutoTokenizer

    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    _sparse_safetensors(path / "model.safetensors", {key: (8, 4)})
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(path))
    return path


def test_full_size_release_passes_check_only(tmp_path, full_manifest):
    """`erasure convert open-sora --check-only` on full-size files (sparse: 22 GiB on paper, nothing on disk)."""
    from erasure_core.cli import main
    from erasure_core.pipelines.open_sora.vae_manifest import official_vae_manifest
    from erasure_core.worlds.text import encoder_path

    checkpoint = _sparse_safetensors(tmp_path / "Open_Sora_v2.safetensors", full_manifest)
    vae = _sparse_safetensors(tmp_path / "hunyuan_vae.safetensors", official_vae_manifest())
    assert checkpoint.stat().st_size > 22 * 2**30
    t5 = _config_only_encoder(tmp_path / "t5", {"model_type": "t5", "d_model": 4096}, encoder_path())
    clip_config = {"model_type": "clip", "text_config": {"hidden_size": 768}}
    clip = _config_only_encoder(tmp_path / "clip", clip_config, encoder_path(), "text_model.final_layer_norm.weight")
    args = ["convert", "open-sora", "--checkpoint", str(checkpoint), "--vae", str(vae), "--t5", str(t5)]
    args += ["--clip", str(clip), "-o", str(tmp_path / "out"), "--check-only"]
    assert main(args) == 0
    assert not (tmp_path / "out").exists()
    t5_wrong = _config_only_encoder(tmp_path / "t5-base", {"model_type": "t5", "d_model": 768}, encoder_path())
    with pytest.raises(ConversionError, match="width is 768 but the transformer reads 4096"):
        assemble_open_sora(ReleaseInputs(checkpoint, vae, t5_wrong, clip), tmp_path / "out", check_only=True)


def test_truncated_and_pickled_inputs_are_refused(tmp_path):
    good = _sparse_safetensors(tmp_path / "a.safetensors", {"img_in.weight": (4, 4)})
    with good.open("r+b") as f:
        f.truncate(good.stat().st_size - 2)
    with pytest.raises(ConversionError, match="truncated or corrupted download"):
        read_safetensors_header(good)
    with pytest.raises(ConversionError, match="only .safetensors"):
        read_safetensors_header(tmp_path / "Open_Sora_v2.pt")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4096}))
    (tmp_path / "enc" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConversionError, match=r"no .safetensors weights \(found \['pytorch_model.bin'\]"):
        inspect_encoder(tmp_path / "enc", "t5", 4096)


def _tiny_release_encoders(root: Path) -> tuple[Path, Path]:
    """Tiny CLIPModel (text + vision towers) and T5ForConditionalGeneration (encoder + decoder) release folders."""
    from transformers import CLIPConfig, CLIPModel, T5Config, T5ForConditionalGeneration

    from erasure_core.worlds.text import encoder_path

    torch.manual_seed(0)
    text = {"hidden_size": 24, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1}
    vision = {**text, "image_size": 8, "patch_size": 4}
    clip = CLIPModel(CLIPConfig(text_config={**text, "vocab_size": 40000}, vision_config=vision, projection_dim=8))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40000, d_model=20, d_kv=10, d_ff=32, num_layers=1, num_heads=2))
    for model, folder in ((clip, root / "clip"), (t5, root / "t5")):
        model.save_pretrained(str(folder))
        for file in encoder_path().glob("*token*"):  # any loadable tokenizer: this test is about the weights
            shutil.copyfile(file, folder / file.name)
        shutil.copyfile(encoder_path() / "vocab.txt", folder / "vocab.txt")
    return root / "clip", root / "t5"


def test_release_encoders_keep_only_the_text_tower(tmp_path):
    """CLIP-L and T5-XXL arrive as whole models: the text tower and the encoder are written, and load unchanged."""
    from transformers import CLIPTextModel, T5EncoderModel

    from erasure_core.pipelines.open_sora.assemble import _write_encoder

    clip, t5 = _tiny_release_encoders(tmp_path)
    ids = torch.tensor([[5, 17, 99, 2]])
    for source, role, width, cls, prefixes in (
        (clip, "clip", 24, CLIPTextModel, ("text_model.",)),
        (t5, "t5", 20, T5EncoderModel, ("shared.", "encoder.")),
    ):
        folder = inspect_encoder(source, role, width)
        _write_encoder(folder, tmp_path / f"{role}-model", tmp_path / f"{role}-tok", max_bytes=2**30)
        written = read_safetensors_header(tmp_path / f"{role}-model" / "model.safetensors")
        assert written and all(key.startswith(prefixes) for key in written)
        with torch.no_grad():
            expected = cls.from_pretrained(str(source)).eval()(ids).last_hidden_state
            got = cls.from_pretrained(str(tmp_path / f"{role}-model")).eval()(ids).last_hidden_state
        assert torch.equal(got, expected), role


# -- a tiny release: the video demo world written back in the official layout, converted, loaded, generated


def _to_official(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our transformer state dict in the official layout (the inverse of the converter's table)."""
    official: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        module, _, param = key.rpartition(".")
        name = official_module_name(module)
        official_key = f"{name}.{'scale' if name.endswith('_norm') else param}"
        if name.endswith(".v_mlp"):
            fused.setdefault(official_key, {})[module.rpartition(".")[2]] = tensor
        elif name == "final_layer.adaLN_modulation.1":
            official[official_key] = torch.cat(tensor.chunk(2)[::-1])
        else:
            official[official_key] = tensor
    for key, parts in fused.items():
        official[key] = torch.cat([parts["to_v"], parts["proj_mlp"]])
    return official


def _release_encoder(world: Path, slot: str, tokenizer: str, target: Path) -> Path:
    """A release-style encoder folder (model and tokenizer together) from a demo-world slot."""
    target.mkdir()
    for file in (world / slot).iterdir():
        shutil.copyfile(file, target / file.name)
    for file in (world / tokenizer).iterdir():
        shutil.copyfile(file, target / file.name)
    return target


@pytest.fixture(scope="module")
def tiny_release(cache_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """The video demo world as an official release: (folder, the `convert` arguments without -o)."""
    from safetensors.torch import load_file, save_file

    from erasure_core.worlds.video_world import VIDEO_WORLD_WEIGHTS, assemble_video_world

    world = assemble_video_world(cache_dir)
    root = tmp_path_factory.mktemp("tiny-release")
    ours = load_file(str(VIDEO_WORLD_WEIGHTS / "transformer" / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.contiguous() for k, v in _to_official(ours).items()}, str(root / "Open_Sora_v2.safetensors"))
    shutil.copyfile(
        VIDEO_WORLD_WEIGHTS / "vae" / "diffusion_pytorch_model.safetensors", root / "hunyuan_vae.safetensors"
    )
    clip = _release_encoder(world, "text_encoder", "tokenizer", root / "clip")
    t5 = _release_encoder(world, "text_encoder_2", "tokenizer_2", root / "t5")
    args = ["convert", "open-sora", "--checkpoint", str(root / "Open_Sora_v2.safetensors")]
    args += ["--vae", str(root / "hunyuan_vae.safetensors"), "--t5", str(t5), "--clip", str(clip)]
    args += ["--transformer-config", str(VIDEO_WORLD_WEIGHTS / "transformer" / "config.json")]
    args += ["--vae-config", str(VIDEO_WORLD_WEIGHTS / "vae" / "config.json")]
    return world, args


def _clips(source: str, cache_dir: Path) -> torch.Tensor:
    """Two clips from the Open-Sora model served from `source`, loaded by the service's loader."""
    from erasure_core.engines.open_sora import VideoParams
    from service.pipelines import PipelinePool
    from service.settings import Settings

    settings = Settings(device="cpu", dtype="float32", open_sora_model=source, cache_dir=cache_dir, auth="off")
    engine = PipelinePool.load(settings, models=("open-sora",)).get("open-sora").engine
    return engine.generate(["a red circle", "a blue square"], [3, 4], VideoParams(steps=4))


def test_tiny_release_converts_loads_and_generates_the_demo_world(tiny_release, tmp_path, cache_dir):
    """The converted folder (transformer in 3 shards) loads through the service loader and generates clips
    bit-identical to the demo world it was written from."""
    from erasure_core.cli import main

    world, args = tiny_release
    out = tmp_path / "open-sora-2"
    assert main([*args, "-o", str(out), "--max-shard-gib", str(3 / 2**10)]) == 0  # 3 MiB shards
    index = json.loads((out / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert json.loads((out / "model_index.json").read_text())["text_encoder_2"] == ["transformers", "BertModel"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open-sora-2"], "no staging folder is left behind"
    converted = _clips(str(out), cache_dir)
    assert converted.shape == (2, 9, 3, 32, 32)
    assert torch.equal(converted, _clips("demo", cache_dir))


def test_out_is_replaced_only_with_force_and_never_half_written(tiny_release, tmp_path):
    from erasure_core.cli import main

    _, args = tiny_release
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main([*args, "-o", str(out)]) == 1, "an existing OUT is refused"
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    bad = [*args]
    bad[bad.index("--vae-config") + 1] = str(tmp_path / "missing.json")
    with pytest.raises(SystemExit):  # argparse refuses an unreadable config before anything runs
        main([*bad, "-o", str(tmp_path / "other")])
    at = args.index("--vae-config")
    official_vae = args[:at] + args[at + 2 :]  # the tiny VAE checked against the release's VAE config
    assert main([*official_vae, "-o", str(tmp_path / "other")]) == 1, "the tiny VAE does not match the release VAE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a failed conversion writes nothing"
    assert main([*args, "-o", str(out), "--force"]) == 0
    assert (out / "model_index.json").is_file() and not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
