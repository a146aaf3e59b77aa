"""Video erasure on the Open-Sora family: the training ops follow the sampler exactly, the anchor-and-propagate loss
does what it says, EraseAnything++ trains through the shared trainer, and ICE erases a shape from every frame.

Figures are judged frame by frame (`erasure_core.worlds.video_metrics`). EraseAnything++'s judged effect over HTTP is
tests/service/test_video_erasure.py's; the full `preset: cpu` comparison (none, ICE, EraseAnything++ with and without
the temporal term) is `bench/quality_video.py`'s, which takes minutes.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from erasure_core.concepts import ConceptSpec
from erasure_core.engines.open_sora import VideoParams
from erasure_core.errors import UnsupportedMethodError
from erasure_core.families.open_sora import OPEN_SORA
from erasure_core.methods import get_method
from erasure_core.methods.eraseanything import losses
from erasure_core.pipelines.open_sora.pipeline_open_sora import pack_latents
from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES
from erasure_core.worlds.video_metrics import TemporalReport, frame_rates, measure_temporal

logger = logging.getLogger(__name__)
STEPS = 8
TARGET = "triangle"
TARGET_SEEDS = (0, 1)
OTHER_COLORS, OTHER_SEEDS = COLOR_NAMES, (0, 1)  # 48 clips of other shapes: about 2 points a clip


@pytest.fixture(scope="module")
def engine(cache_dir):
    from erasure_core.models import load_engine

    return load_engine("open-sora", "demo", device="cpu", cache_dir=cache_dir)


def _generate(engine, erasures: list[str]):
    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return engine.generate(prompts, seeds, params=VideoParams(steps=STEPS), erasures=erasures)

    return generate


def _measure(engine, erasures: list[str]) -> TemporalReport:
    return measure_temporal(
        _generate(engine, erasures),
        TARGET,
        COLOR_NAMES,
        TARGET_SEEDS,
        other_colors=OTHER_COLORS,
        other_seeds=OTHER_SEEDS,
    )


# ---- the training ops follow the sampler ---------------------------------------------------------------------------
def test_ops_reproduce_the_pipeline_sampler(engine) -> None:
    """Sigmas, noise, guided Euler steps and the transformer call are the pipeline's own: the full sample equals
    `OpenSoraPipeline(output_type="latent")` bit for bit."""
    pipe, ops = engine.pipe, OPEN_SORA.training
    shape = pipe.latent_shape(1, pipe.native_num_frames, *pipe.native_size)
    sigmas = ops.sigmas(pipe, STEPS)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == STEPS + 1
    cond = ops.encode_text(pipe, ["a red triangle"])
    x, sigma = ops.sample_partial(pipe, cond, STEPS, STEPS, torch.Generator().manual_seed(3))
    ref = pipe(
        "a red triangle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type="latent"
    ).frames
    assert torch.equal(pack_latents(ref, pipe.patch_size), x) and float(sigma[0]) == 0.0
    assert torch.allclose(pipe.scheduler.sigmas, sigmas)  # the sampler's schedule after that call
    assert tuple(x.shape) == (1, shape[2] * (shape[3] // 2) * (shape[4] // 2), 64)


def test_ops_frames_keywords_and_attention(engine) -> None:
    pipe, ops = engine.pipe, OPEN_SORA.training
    frames = ops.token_frames(pipe)
    assert frames.tolist() == [f for f in range(3) for _ in range(16)]  # frame-major packing, 16 tokens a frame
    cond = ops.encode_text(pipe, ["a red triangle", "a triangle, moving left"])
    assert ops.keyword_positions(pipe, cond, "triangle") == [[3], [2]]
    x = ops.noise(pipe, 2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.7)
    with ops.capture_attention(pipe) as record:
        recorded = ops.velocity(pipe, x, sigma, cond)
    plain = ops.velocity(pipe, x, sigma, cond)
    assert torch.allclose(recorded, plain, atol=1e-4)  # the recording processor is the model's attention
    n = cond.tokens.shape[1] + x.shape[1]
    assert record["probs"].shape == (2, 4, n, n)


def test_a_family_without_training_ops_is_still_refused() -> None:
    method = get_method("eraseanything")
    method.check_family(OPEN_SORA)  # Open-Sora now trains
    with pytest.raises(UnsupportedMethodError):
        method.check_family(dataclasses.replace(OPEN_SORA, training=None))


# ---- anchor-and-propagate ------------------------------------------------------------------------------------------
def test_anchored_esd_loss_weighs_the_first_frame_and_the_later_ones() -> None:
    torch.manual_seed(0)
    frames = torch.arange(3).repeat_interleave(4)
    v0, vp = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    target = losses.esd_target(v0, vp, 2.0)
    vn = target.clone()
    vn[:, 4:] += 1.0  # later frames off target, the first frame on it
    anchored, per_frame = losses.anchored_esd_loss(vn, v0, vp, 2.0, frames, temporal_weight=0.0)
    assert float(anchored) == 0.0 and per_frame.tolist() == pytest.approx([0.0, 1.0, 1.0])
    full, _ = losses.anchored_esd_loss(vn, v0, vp, 2.0, frames, temporal_weight=3.0)
    assert float(full) == pytest.approx(3.0)
    vn.requires_grad_(True)
    loss, _ = losses.anchored_esd_loss(vn, v0, vp, 2.0, frames, temporal_weight=0.0)
    loss.backward()
    assert vn.grad is not None and float(vn.grad[:, 4:].abs().sum()) == 0.0  # temporal off: later frames untouched


# ---- per-frame metrics ---------------------------------------------------------------------------------------------
def test_frame_rates_follow_the_judge() -> None:
    from erasure_core.worlds.clips import sample_clips

    clips = sample_clips(12, seed=4)
    shape = SHAPES[int(clips.shapes[0])]
    rates = frame_rates(clips.frames, shape)
    share = float((clips.shapes == clips.shapes[0]).float().mean())
    assert len(rates) == clips.frames.shape[1] and all(abs(r - share) <= 1 / 12 + 1e-6 for r in rates)
    report = TemporalReport("x", [0.5, 0.2, 0.6], {"a": [1.0, 1.0, 0.5]})
    assert report.leakage == pytest.approx(0.1) and report.max_target_rate == 0.6
    assert report.others_change(TemporalReport("x", [0, 0, 0], {"a": [1.0, 0.5, 0.5]})) == [0.0, 0.5, 0.0]


# ---- erasures judged frame by frame ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(engine) -> TemporalReport:
    return _measure(engine, [])


def test_ice_erases_the_shape_in_every_frame(engine, base: TemporalReport) -> None:
    """ICE (keeping the other shapes by name): the target in no frame, no late leak, the others' per-frame rate
    within 5 points. Without `preserve` the others lose about 20 points per frame on this world (the bench)."""
    spec = ConceptSpec(concept=TARGET, preserve=tuple(s for s in SHAPES if s != TARGET))
    engine.attach("ice-video", engine.erase(spec, method="ice"))
    erased = _measure(engine, ["ice-video"])
    figures = {"base": base.to_json(), "erased": erased.to_json(base)}
    logger.info("video ICE: %s", figures)
    assert min(base.target_rate) >= 0.8, figures
    assert erased.max_target_rate <= 0.05, figures
    assert erased.leakage <= 0.02, figures
    assert max(abs(c) for c in erased.others_mean_change(base)) <= 0.05, figures


def test_eraseanything_runs_on_open_sora(engine) -> None:
    """EraseAnything++ trains on the Open-Sora family through the shared trainer: LoRA on the double blocks' text
    Q/K, per-frame losses in the progress, the trainer's per-frame residual in the stats. (A few steps: the judged
    effect is the service test's and the bench's.)"""
    seen: list[dict[str, float]] = []
    options = {"steps": 3, "concept_images": 1, "sample_steps": 2, "checkpoint_every": 3, "temporal_weight": 2.0}
    artifact = engine.erase(
        ConceptSpec(concept=TARGET), method="eraseanything", options=options, progress=lambda *a: seen.append(a[2])
    )
    assert sorted(artifact.deltas) == sorted(OPEN_SORA.resolve_lora_targets(engine.pipe.transformer, "text_qk"))
    assert all(name.endswith(("add_q_proj", "add_k_proj")) for name in artifact.deltas)
    assert len(seen) == 3 and {"esd_first", "esd_last"} <= set(seen[-1])
    temporal = artifact.metadata["stats"]["temporal"]
    assert len(temporal["frame_residual"]) == 3 and temporal["temporal_weight"] == 2.0, temporal
    assert artifact.metadata["params"]["temporal_weight"] == 2.0
