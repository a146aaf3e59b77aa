"""Real-model loading and training options, exercised on the demo world on a CPU: dtype `auto`, CPU offload
(model and sequential), VAE tiling/slicing, an int8 weight-only transformer, trainer resolution / gradient
checkpointing / fp32 LoRA masters, and the command line's `ERASURE_ALLOW_DOWNLOADS`.

Offload has no accelerator to offload to here, so the loader runs diffusers' offload hooks with the CPU as execution
device: the same code path a GPU host runs (hooks, meta-device weights for sequential offload, resident text layers),
without the memory saving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from erasure_core.adapters import AdapterHost, get_linear
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.concepts import ConceptSpec
from erasure_core.engines import GenerationParams
from erasure_core.errors import InvalidConfigError, ModelLoadError
from erasure_core.methods import get_method
from erasure_core.methods.eraseanything.config import EraseAnythingConfig
from erasure_core.methods.eraseanything.trainer import EraseAnythingTrainer
from erasure_core.models import load_engine
from erasure_core.pipelines.loading import LoadOptions, is_quantized, resolve_dtype
from service.pipelines import PipelinePool
from service.settings import Settings

PARAMS = GenerationParams(steps=4)
SPEC = ConceptSpec(concept="triangle", synonyms=("pyramid",))
PROMPTS = ["a red triangle", "a blue circle"]
# A short EraseAnything++ run on the demo world (a few seconds on one CPU thread).
TINY = {
    "preset": "cpu",
    "steps": 3,
    "sample_steps": 2,
    "concept_images": 2,
    "preserve_images": 4,
    "preserve_batch": 2,
}


@pytest.fixture(scope="module")
def bf16_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo world's Flux pipeline saved in bfloat16 (safetensors) as an ordinary diffusers folder."""
    from diffusers import FluxPipeline

    folder = tmp_path_factory.mktemp("bf16") / "flux-bf16"
    FluxPipeline.from_pretrained(demo_dir, torch_dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def _settings(folder: Path, **kw: object) -> Settings:
    return Settings(flux_model=str(folder), device="cpu", auth="off", **kw)


@pytest.fixture(scope="module")
def bf16_plain(bf16_dir: Path):
    return PipelinePool.load(_settings(bf16_dir, dtype="bfloat16"), models=["flux"]).get("flux").engine


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert Settings(auth="off").dtype == "auto"
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int4", torch.device("cpu"))


def test_memory_settings_are_validated() -> None:
    for bad in ({"offload": "disk"}, {"quantize": "int3"}, {"vae_tiling": "sometimes"}):
        with pytest.raises(ValidationError):
            Settings(auth="off", **bad)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_bf16_pipeline_with_offload_loads_generates_and_erases(bf16_dir: Path, bf16_plain, offload: str) -> None:
    """The done-when line: a Flux pipeline saved in bf16, loaded through the service's loader with offload on,
    generates (the same images as without offload) and takes an ICE erasure that changes the concept and detaches
    exactly."""
    settings = _settings(bf16_dir, dtype="bfloat16", offload=offload, vae_tiling=True, vae_slicing=True)
    engine = PipelinePool.load(settings, models=["flux"]).get("flux").engine
    pipe = engine.pipe
    assert engine.loaded.options.offload == offload
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    if offload == "model":
        assert pipe._all_hooks, "no model offload hooks were installed"
    else:
        offloaded = [m for m in pipe.transformer.modules() if getattr(m, "_hf_hook", None) is not None]
        assert offloaded, "no sequential offload hooks were installed"
        assert any(p.device.type == "meta" for p in pipe.transformer.parameters())
    # The text-conditioning layers stay real bf16 tensors: the layer hash and ICE read them.
    for name in engine.family.edited_layers:
        weight = get_linear(pipe.transformer, name).weight
        assert weight.device.type == "cpu" and weight.dtype == torch.bfloat16
    assert engine.layer_hash == bf16_plain.layer_hash

    base = engine.generate(PROMPTS, [0, 1], PARAMS)
    assert base.shape[-2:] == engine.native_size and base.std() > 0.01
    torch.testing.assert_close(base, bf16_plain.generate(PROMPTS, [0, 1], PARAMS), atol=2e-2, rtol=0)

    artifact = engine.erase(SPEC, method="ice")
    engine.attach("tri", artifact)
    erased = engine.generate(PROMPTS, [0, 1], PARAMS, erasures=["tri"])
    assert (erased[0] - base[0]).abs().mean() > 0.02, "the erasure did not change the concept's image"
    assert torch.equal(engine.generate(PROMPTS, [0, 1], PARAMS), base), "detach (empty set) is not exact"
    # The same erasure computed on the plain bf16 load: offload does not change what ICE computes.
    plain = bf16_plain.erase(SPEC, method="ice")
    for name, delta in artifact.deltas.items():
        torch.testing.assert_close(delta.dense(), plain.deltas[name].dense(), atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def quantized(demo_dir: Path):
    return load_engine("flux", "demo", device="cpu", cache_dir=demo_dir.parent, options=LoadOptions(quantize="int8wo"))


def test_quantized_transformer_keeps_the_text_layers_exact(quantized, demo_engine) -> None:
    transformer = quantized.pipe.transformer
    assert is_quantized(transformer) and not is_quantized(demo_engine.pipe.transformer)
    kept = set(quantized.family.edited_layers)
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, nn.Linear)}
    quantized_names = [n for n, m in linears.items() if type(m.weight) not in (torch.Tensor, nn.Parameter)]
    assert quantized_names and not kept & set(quantized_names)
    assert set(quantized_names) == set(linears) - kept
    # Erasures computed on the quantized model attach to the full-precision one and vice versa (same layer hash),
    # and ICE reads the same base weights.
    assert quantized.layer_hash == demo_engine.layer_hash
    artifact = quantized.erase(SPEC, method="ice")
    reference = demo_engine.erase(SPEC, method="ice")
    for name, delta in artifact.deltas.items():
        torch.testing.assert_close(delta.dense(), reference.deltas[name].dense(), atol=1e-4, rtol=1e-4)
    images = quantized.generate(PROMPTS, [0, 1], PARAMS)
    torch.testing.assert_close(images, demo_engine.generate(PROMPTS, [0, 1], PARAMS), atol=0.1, rtol=0)


def test_a_delta_on_a_quantized_linear_is_added_exactly(quantized) -> None:
    """The erasure hook adds scale * B A x to a quantized layer's output, whatever the weight's format."""
    transformer = quantized.pipe.transformer
    name = "transformer_blocks.0.attn.to_q"
    module = get_linear(transformer, name)
    assert type(module.weight) not in (torch.Tensor, nn.Parameter), f"{name} is not quantized"
    out_f, in_f = module.weight.shape
    g = torch.Generator().manual_seed(0)
    delta = LowRankDelta(torch.randn(2, in_f, generator=g), torch.randn(out_f, 2, generator=g), scale=0.5)
    host = AdapterHost(transformer)
    try:
        host.attach("q", ErasureArtifact({name: delta}, {}))
        x = torch.randn(3, in_f, generator=g)
        base = module(x)
        host.activate(["q"])
        hooked = module(x)
        host.activate(())
        assert torch.equal(module(x), base)
    finally:
        host.close()
    expected = 0.5 * (x @ delta.A.T) @ delta.B.T
    torch.testing.assert_close(hooked - base, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hooked, base)


def test_eraseanything_trains_on_a_quantized_model(quantized) -> None:
    """Gradients flow through the int8 layers to the fp32 LoRA factors on the (unquantized) text layers."""
    logs: list[dict] = []
    artifact = quantized.erase(SPEC, "eraseanything", TINY, progress=lambda s, t, entry: logs.append(entry))
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert any(d.B.abs().sum() > 0 for d in artifact.deltas.values())


def test_quantize_with_sequential_offload_is_refused(demo_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="layer by layer"):
        load_engine(
            "flux",
            "demo",
            device="cpu",
            cache_dir=demo_dir.parent,
            options=LoadOptions(quantize="int8wo", offload="sequential"),
        )


# ---- trainer -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"resolution": 100}, {"resolution": 8}, {"resolution": 4096}, {"gradient_checkpointing": "maybe"}]
)
def test_bad_training_options_are_refused_at_creation(bad: dict) -> None:
    with pytest.raises(InvalidConfigError) as info:
        get_method("eraseanything").parse_config(bad)
    assert info.value.code == "invalid_request"


def test_model_dependent_defaults() -> None:
    cfg = EraseAnythingConfig()
    real = cfg.for_model((1024, 1024), demo=False)
    assert real.resolution == 512 and real.gradient_checkpointing is True
    demo = cfg.for_model((32, 32), demo=True)
    assert demo.resolution == 32 and demo.gradient_checkpointing is False
    chosen = EraseAnythingConfig(resolution=256, gradient_checkpointing=False).for_model((1024, 1024), demo=False)
    assert chosen.resolution == 256 and chosen.gradient_checkpointing is False


def _train(engine, options: dict, seen: list[bool]) -> tuple[list[dict], ErasureArtifact]:
    logs: list[dict] = []

    def progress(step: int, total: int, entry: dict) -> None:
        logs.append(entry)
        seen.append(bool(engine.pipe.transformer.gradient_checkpointing))

    artifact = engine.erase(SPEC, method="eraseanything", options=options, progress=progress)
    return logs, artifact


def test_gradient_checkpointing_gives_the_same_losses(demo_engine) -> None:
    seen_off: list[bool] = []
    seen_on: list[bool] = []
    off, art_off = _train(demo_engine, TINY, seen_off)
    on, art_on = _train(demo_engine, {**TINY, "gradient_checkpointing": True}, seen_on)
    assert seen_off == [False] * 3 and seen_on == [True] * 3
    assert not demo_engine.pipe.transformer.gradient_checkpointing, "left on after the run"
    assert len(off) == len(on) == 3
    for a, b in zip(off, on, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    # Adam divides by the gradient's running RMS, so float-rounding differences in near-zero gradients show up in
    # single entries: the factors are compared as a whole.
    for name, delta in art_off.deltas.items():
        moved = delta.B.norm()
        assert moved > 0
        assert (delta.B - art_on.deltas[name].B).norm() / moved < 1e-3, name
    assert art_on.metadata["params"]["gradient_checkpointing"] is True


def test_lora_masters_and_adam_state_are_fp32_on_a_bf16_model(demo_dir: Path) -> None:
    engine = load_engine("flux", "demo", device="cpu", dtype="bfloat16", cache_dir=demo_dir.parent)
    assert engine.pipe.transformer.dtype == torch.bfloat16
    cfg = get_method("eraseanything").parse_config(TINY).for_model(engine.native_size, demo=True)
    trainer = EraseAnythingTrainer(
        engine.pipe, engine.family, cfg, "triangle", ["a red triangle"], ["pyramid"], "thing", ["a blue circle"] * 4
    )
    try:
        before = {n: b.detach().clone() for n, (_, b) in trainer.lora.params.items()}
        for _ in range(2):
            logs = trainer.train_step()
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        for name, (a, b) in trainer.lora.params.items():
            assert a.dtype == b.dtype == torch.float32
            assert not torch.equal(b.detach(), before[name]), "the LoRA did not move"
        states = [s for s in trainer.opt.state.values()]
        assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)
        assert engine.pipe.transformer.dtype == torch.bfloat16
    finally:
        trainer.lora.remove()


# ---- command line ------------------------------------------------------------------------------------------------


def _erase_cli(main, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="erasure"):
        code = main(
            ["erase", "--model", "no-such-org-x9/no-such-model-x9", "--concept", "x", "-o", str(tmp_path / "e")]
        )
    return code, caplog.text


@pytest.mark.parametrize("program", ["erasure_core.cli", "service.cli"])
def test_cli_honours_allow_downloads(
    program: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    main = importlib.import_module(program).main
    monkeypatch.delenv("ERASURE_ALLOW_DOWNLOADS", raising=False)
    code, text = _erase_cli(main, tmp_path, caplog)
    assert code == 1 and "downloads are off" in text and "ERASURE_ALLOW_DOWNLOADS" in text

    # Allowed: the loader goes to the hub (offline in tests, or a 404 online) and fails with its own error.
    monkeypatch.setenv("ERASURE_ALLOW_DOWNLOADS", "1")
    code, text = _erase_cli(main, tmp_path, caplog)
    assert code == 1 and "model_load_failed" in text and "no-such-model-x9" in text
    assert "downloads are off" not in text
