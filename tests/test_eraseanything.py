"""EraseAnything++ on the demo world: the "cpu" preset meets the LoRA-jobs bars alone and composed with an ICE edit;
checkpoints resume exactly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from erasure_core.checkpoints import FileCheckpoints
from erasure_core.concepts import ConceptSpec
from erasure_core.methods.eraseanything.config import EraseAnythingConfig
from erasure_core.worlds.evaluation import WorldReport, engine_generator, erasure_samples, judge_samples
from erasure_core.worlds.shapes import SHAPES, SYNONYMS

SHAPE, NAMED = "triangle", ("pyramid",)
NAMED_BY_SHAPE = {SHAPE: NAMED, "square": ("box",)}
KEEP = ("square", "cross", "circle", "diamond")  # what the caller asks to keep: half the preserve images
# The LoRA-jobs issue's bars on the demo world: target <= 10%, unnamed synonyms <= 20%, every other shape within
# 5 points. Its time bar (a "cpu" preset job within 5 minutes) is measured by bench/train.py, not asserted here: a
# slow CI machine spent 306 s setting this module up (the training and the base samples), so a timed assertion
# would fail on the machine's speed, not the job's.
TARGET_MAX, UNNAMED_MAX, OTHER_DROP_MAX = 0.10, 0.20, 0.05


@pytest.fixture(scope="module")
def trained(demo_engine, tmp_path_factory: pytest.TempPathFactory):
    ckpt = FileCheckpoints(tmp_path_factory.mktemp("ea") / "ckpt.safetensors")
    started = time.perf_counter()
    artifact = demo_engine.erase(
        ConceptSpec(concept=SHAPE, synonyms=NAMED, preserve=KEEP),
        method="eraseanything",
        options={"preset": "cpu"},
        checkpoints=ckpt,
    )
    return artifact, time.perf_counter() - started


@pytest.fixture(scope="module")
def base_report(demo_engine, judge) -> WorldReport:
    return judge_samples(engine_generator(demo_engine), erasure_samples([SHAPE, "square"]), judge)


def _check(base: WorldReport, erased: WorldReport, bars: dict[str, float], figures: dict) -> None:
    """`bars`: erased shape -> its maximum judged rate. Unnamed synonyms <= 20%, other shapes within 5 points."""
    for shape, bar in bars.items():
        assert base.word_rate[shape] >= 0.80, figures
        assert erased.word_rate[shape] <= bar, figures
        unnamed = [w for w in SYNONYMS[shape] if w not in NAMED_BY_SHAPE[shape]]
        assert erased.rate_of(unnamed) <= UNNAMED_MAX, figures
    for shape in SHAPES:
        if shape not in bars:
            assert base.word_rate[shape] - erased.word_rate[shape] <= OTHER_DROP_MAX, figures
    assert erased.mean_color_accuracy >= 0.80, figures


def test_cpu_preset_erases_the_shape_and_keeps_the_others(demo_engine, judge, trained, base_report) -> None:
    artifact, seconds = trained
    assert sorted(artifact.deltas) == sorted(
        f"transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("add_q_proj", "add_k_proj")
    )
    demo_engine.attach("ea-target", artifact)
    try:
        erased = judge_samples(engine_generator(demo_engine, ["ea-target"]), erasure_samples([SHAPE, "square"]), judge)
    finally:
        demo_engine.detach("ea-target")
    figures = {"train_s": round(seconds, 1), "base": base_report.word_rate, "erased": erased.word_rate}
    print("EraseAnything++ cpu preset", SHAPE, json.dumps(figures))
    _check(base_report, erased, {SHAPE: TARGET_MAX}, figures)


def test_lora_erasure_composes_with_an_ice_erasure(demo_engine, judge, trained, base_report) -> None:
    """The trained adapter (on the transformer) and an ICE edit (on the text-conditioning layers) in one set: both
    concepts go, the other shapes stay."""
    ice = demo_engine.erase(ConceptSpec(concept="square", synonyms=("box",), anchor="circle", expand=True))
    demo_engine.attach("ea-target", trained[0])
    demo_engine.attach("ice-square", ice)
    try:
        erased = judge_samples(
            engine_generator(demo_engine, ["ea-target", "ice-square"]), erasure_samples([SHAPE, "square"]), judge
        )
    finally:
        demo_engine.detach("ea-target")
        demo_engine.detach("ice-square")
    figures = {"base": base_report.word_rate, "composed": erased.word_rate}
    print("EraseAnything++ + ICE", json.dumps(figures))
    _check(base_report, erased, {SHAPE: TARGET_MAX, "square": TARGET_MAX}, figures)


def test_resume_from_checkpoint_gives_the_same_adapter(demo_engine, tmp_path: Path) -> None:
    options = {
        "preset": "cpu",
        **{"steps": 4, "checkpoint_every": 2, "concept_images": 2, "sample_steps": 4, "preserve_images": 4},
    }
    spec = ConceptSpec(concept="square", synonyms=("box",))
    straight = demo_engine.erase(spec, method="eraseanything", options=options)

    ckpt = FileCheckpoints(tmp_path / "ckpt.safetensors")

    class Crash(Exception):
        pass

    def crash_after_two(step: int, total: int, logs: dict) -> None:
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        demo_engine.erase(spec, method="eraseanything", options=options, progress=crash_after_two, checkpoints=ckpt)
    assert ckpt.load() is not None and ckpt.load()[1]["step"] == 2
    resumed = demo_engine.erase(spec, method="eraseanything", options=options, checkpoints=ckpt)
    for name, delta in straight.deltas.items():
        assert torch.allclose(delta.B, resumed.deltas[name].B, atol=1e-6), name
        assert torch.allclose(delta.A, resumed.deltas[name].A, atol=1e-6), name


def test_published_defaults() -> None:
    cfg = EraseAnythingConfig()
    assert (cfg.rank, cfg.lr, cfg.steps, cfg.tau, cfg.eta) == (8, 1e-3, 200, 0.07, 1.0)
    assert (cfg.lambda_esd, cfg.lambda_attn, cfg.lambda_fm, cfg.lambda_nce) == (1.0, 0.001, 0.1, 0.1)
    assert (cfg.eupmu_lr, cfg.eupmu_weight_decay, cfg.eupmu_eps) == (0.3, 0.01, 0.003)


def test_presets_fill_under_explicit_options_and_reparse_unchanged() -> None:
    """A job's options are stored as sent ({"preset": "cpu", ...}) and parsed again by the worker: same config."""
    cpu = EraseAnythingConfig.model_validate({"preset": "cpu", "steps": 10})
    assert (cpu.steps, cpu.lr, cpu.eta, cpu.lambda_preserve, cpu.retain_images) == (10, 3e-3, 2.0, 300.0, "preserve")
    assert EraseAnythingConfig.model_validate(cpu.model_dump()) == cpu
    assert EraseAnythingConfig.model_validate({"preset": "published"}) == EraseAnythingConfig()
    with pytest.raises(ValueError):
        EraseAnythingConfig.model_validate({"preset": "gpu"})


def test_adaptive_choices_follow_the_preset_and_explicit_options() -> None:
    cpu = EraseAnythingConfig.model_validate({"preset": "cpu"})
    assert cpu.adaptive is None and cpu.eta == 2.0  # None: off until its figures hold (method.py); opt in with true
    assert EraseAnythingConfig.model_validate({"preset": "cpu", "adaptive": False}).adaptive is False
    assert EraseAnythingConfig().max_steps is None


def test_with_only_the_concept_named_a_neighbour_can_be_the_anchor(demo_engine) -> None:
    """The shapes world draws circles for every neutral word (its prior shape), so a circle job anchored on one pulls
    the concept back toward itself; the neighbours expansion finds (read near the circle, drawn differently) are
    measured beside the neutral words, and the one the model draws most differently from the circle is the anchor."""
    from erasure_core.concepts import TEMPLATES, fill
    from erasure_core.methods.common import expand
    from erasure_core.methods.eraseanything.method import measured_anchor

    ctx = demo_engine.context
    spec = ConceptSpec(concept="circle", expand=True)
    found = expand(ctx, spec)
    config = EraseAnythingConfig(preset="cpu").for_model(ctx.family.native_size(ctx.pipe), demo=True)
    prompts = [fill(t, "circle") for t in TEMPLATES["object"] if "{}" in t]
    word, gaps = measured_anchor(ctx, spec, config, prompts, found.neighbours)
    neutral = max(gaps[w] for w in ("thing", "object", "item"))
    assert word in found.neighbours and gaps[word] >= 2 * neutral, gaps
    named, _ = measured_anchor(ctx, spec.model_copy(update={"anchor": "square"}), config, prompts, found.neighbours)
    assert named == "square"  # a caller's anchor is never second-guessed
