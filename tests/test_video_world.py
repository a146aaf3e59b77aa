"""The video demo world: clips data, offline assembly and loading, and judged generations over fixed seeds.

Done-when: the requested shape is judged present in >= 80% of frames averaged over shapes and seeds, and the shape
visibly moves: its drawn centre shifts >= 2 px between the first and the last frame in >= 80% of clips.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from unittest import mock

import pytest
import torch

from erasure_core.worlds.clips import CLIP_FRAMES, DIRECTIONS, all_clip_captions, sample_clips
from erasure_core.worlds.judge import judge_images, load_judge
from erasure_core.worlds.shapes import SHAPES
from erasure_core.worlds.video_world import (
    MOTION_THRESHOLD_PX,
    VIDEO_WORLD_WEIGHTS,
    VideoWorldReport,
    assemble_video_world,
    clip_shift,
    evaluate_video_world,
)

logger = logging.getLogger(__name__)
COLORS = ("red", "blue")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_video_world(tmp_path_factory.mktemp("video-cache"))


@pytest.fixture(scope="module")
def pipe(world: Path):
    from erasure_core.pipelines.open_sora import OpenSoraPipeline

    torch.manual_seed(0)
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}):
        pipe = OpenSoraPipeline.from_pretrained(str(world), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_clips_are_deterministic_and_move() -> None:
    a, b = sample_clips(16, seed=5), sample_clips(16, seed=5)
    assert torch.equal(a.frames, b.frames) and a.captions == b.captions
    assert a.frames.shape == (16, CLIP_FRAMES, 3, 32, 32)
    for clip, direction, caption in zip(a.frames, a.directions, a.captions, strict=True):
        assert clip_shift(clip) >= MOTION_THRESHOLD_PX
        moved = clip[-1:].amax(1).nonzero().float().mean(0) - clip[:1].amax(1).nonzero().float().mean(0)
        dx, dy = DIRECTIONS[list(DIRECTIONS)[int(direction)]]
        assert float(moved[2] * dx + moved[1] * dy) > 0  # moved along its direction (rows = y, columns = x)
        assert "moving" not in caption or caption.endswith(f"moving {list(DIRECTIONS)[int(direction)]}")
    assert len(all_clip_captions()) == 3600


def test_image_judge_serves_as_frame_judge() -> None:
    """Rendered clip frames are judged as their shape, so the image judge is a valid per-frame judge."""
    clips = sample_clips(40, seed=11)
    verdict = judge_images(clips.frames.reshape(-1, 3, 32, 32), load_judge())
    truth = clips.shapes.repeat_interleave(CLIP_FRAMES)
    assert (verdict.shapes == truth).float().mean() >= 0.95


def test_transformer_training_continues_from_given_weights() -> None:
    """`init` (`--transformer-from`): the EMA starts from those weights, which are left untouched."""
    from erasure_core.pipelines.open_sora import OpenSoraTransformer3DModel
    from erasure_core.worlds.video_training import VideoTransformerTrainConfig, train_video_transformer
    from erasure_core.worlds.video_world import TRANSFORMER_CONFIG

    torch.manual_seed(3)
    init = OpenSoraTransformer3DModel(**TRANSFORMER_CONFIG)
    before = {k: v.clone() for k, v in init.state_dict().items()}
    latents, rows = torch.randn(4, 48, 64), torch.zeros(4, dtype=torch.long)
    tokens, pooled = torch.randn(2, 24, 384), torch.randn(2, 384)
    config = VideoTransformerTrainConfig(steps=2, batch_size=2, ema_decay=1.0)  # decay 1: the EMA never moves
    out = train_video_transformer(latents, rows, tokens, pooled, config, init=init)
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, before[k]) for k, v in out.state_dict().items())


def test_killed_transformer_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from erasure_core.checkpoints import FileCheckpoints
    from erasure_core.worlds.video_training import VideoTransformerTrainConfig, train_video_transformer

    latents, rows = torch.randn(6, 48, 64), torch.tensor([0, 1, 0, 1, 0, 1])
    tokens, pooled = torch.randn(3, 24, 384), torch.randn(3, 384)
    config = VideoTransformerTrainConfig(steps=4, batch_size=2, warmup=1)
    whole = train_video_transformer(latents, rows, tokens, pooled, config)

    store = FileCheckpoints(tmp_path / "run.safetensors")

    def killed(step: int, loss: float) -> None:
        if step == 2:  # after the checkpoint of step 2, before the one of step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_video_transformer(
            latents, rows, tokens, pooled, config, on_step=killed, checkpoints=store, checkpoint_every=2
        )
    assert store.saved_step() == 2
    resumed = train_video_transformer(latents, rows, tokens, pooled, config, checkpoints=store, checkpoint_every=2)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    assert store.saved_step() is None  # cleared at the end
    with pytest.raises(ValueError, match="another run"):
        store.save({"rng": torch.Generator().get_state()}, {"step": 1, "config": {}})
        train_video_transformer(latents, rows, tokens, pooled, config, checkpoints=store)


def test_world_assembles_and_loads_offline(world: Path, pipe) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    from erasure_core.pipelines.open_sora import OpenSoraTransformer3DModel

    assert world.name.startswith("demo-video-")
    assert assemble_video_world(world.parent) == world  # reused, not rebuilt
    committed = sorted(p.name for p in VIDEO_WORLD_WEIGHTS.rglob("*") if p.is_file())
    assert all(name.endswith((".safetensors", ".json")) for name in committed)
    assert isinstance(pipe.transformer, OpenSoraTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLHunyuanVideo)
    assert pipe.native_size == (32, 32) and pipe.native_num_frames == CLIP_FRAMES
    assert pipe.default_max_sequence_length == 24 and pipe.tokenizer.model_max_length == 24


@pytest.fixture(scope="module")
def report(pipe) -> VideoWorldReport:
    """5 shapes x 2 colours x 2 seeds at the pipeline's defaults (50 steps, guidance 7.5 with oscillation)."""
    report = evaluate_video_world(pipe, SHAPES, COLORS, SEEDS)
    logger.info("presence %s, motion rate %.2f, shifts %s", report.presence, report.motion_rate, report.shifts)
    return report


def test_generated_clips_move(report: VideoWorldReport) -> None:
    assert report.motion_rate >= 0.8, report.shifts


def test_generated_clips_show_the_requested_shape(report: VideoWorldReport) -> None:
    """Measured on the committed weights: 0.97 mean frame presence (cross 0.86, the other shapes 1.00)."""
    assert report.mean_presence >= 0.8, report.presence


def test_generate_video_defaults(pipe) -> None:
    from erasure_core.engines.open_sora import generate_video

    frames = generate_video(pipe, "a green square", seed=3, steps=8)
    assert frames.shape == (CLIP_FRAMES, 3, 32, 32)
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    again = generate_video(pipe, "a green square", seed=3, steps=8)
    assert torch.equal(frames, again)
