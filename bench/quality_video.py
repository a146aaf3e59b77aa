"""Temporal quality of video erasures on the video demo world: per-frame concept rates, judged frame by frame.

Usage: python bench/quality_video.py [--threads 1] [--concept triangle] [--out video.json] [--skip-trained]
       [--rows eraseanything,eraseanything_no_temporal] [--ea-options '{"lr": 0.006}']
Prints one JSON object (and writes it to --out) with one row per erasure: none; ICE as the service runs it with only the
concept named (expansion on), the same with `expand: false`, and keeping the other shapes by name (`preserve`);
EraseAnything++ `preset: cpu-video` with the temporal term, and the same run with `temporal_weight: 0`. Each row has the
per-frame target rate ("a {colour} {concept}", 6 colours x 4 seeds = 24 clips), each other shape's per-frame rate (6
colours x 2 seeds = 12 clips per shape, 48 in all), first-vs-last leakage, the per-frame change of the other shapes
against `none` (largest of any shape, and of their mean), the seconds the erasure took (training included) and, for
trained rows, the trainer's own per-frame residual. Clips: 9 frames, 32x32, 8 steps, the pipeline's guidance (7.5),
fixed seeds. `erasure_core.worlds.video_metrics` computes every figure; `tests/test_video_erasure.py` asserts a subset.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import torch

from erasure_core.concepts import ConceptSpec
from erasure_core.engines.open_sora import VideoParams
from erasure_core.models import load_engine
from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES
from erasure_core.worlds.video_metrics import TemporalReport, measure_temporal

logger = logging.getLogger("bench.quality_video")
STEPS = 8
TARGET_SEEDS = (0, 1, 2, 3)
OTHER_COLORS = COLOR_NAMES
OTHER_SEEDS = (0, 1)


def measure(engine: Any, target: str, erasures: list[str]) -> TemporalReport:
    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return engine.generate(prompts, seeds, params=VideoParams(steps=STEPS), erasures=erasures)

    return measure_temporal(
        generate, target, COLOR_NAMES, TARGET_SEEDS, other_colors=OTHER_COLORS, other_seeds=OTHER_SEEDS
    )


def row(engine: Any, name: str, spec: ConceptSpec, method: str | None, options: dict[str, Any], base: Any) -> dict:
    seconds = None
    erasures: list[str] = []
    target = spec.concept
    if method is not None:
        started = time.perf_counter()
        artifact = engine.erase(spec, method=method, options=options)
        seconds = round(time.perf_counter() - started, 1)
        engine.attach(name, artifact)
        erasures = [name]
        stats = artifact.metadata.get("stats", {})
    else:
        stats = {}
    report = measure(engine, target, erasures)
    out = {
        "row": name,
        "method": method,
        "preserve": list(spec.preserve),
        "options": options,
        "seconds": seconds,
        **report.to_json(base),
    }
    if "temporal" in stats:
        out["trainer_temporal"] = stats["temporal"]
    logger.info("%s: %s", name, json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-trained", action="store_true", help="only none and ICE")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run besides none (default: all)")
    parser.add_argument("--ea-options", default="{}", help="JSON merged into both EraseAnything++ rows' options")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = load_engine("open-sora", device="cpu")
    target = args.concept
    started = time.perf_counter()
    base_report = measure(engine, target, [])
    rows = [
        {
            "row": "none",
            "method": None,
            "seconds": None,
            "measure_s": round(time.perf_counter() - started, 1),
            **base_report.to_json(),
        }
    ]
    plain = ConceptSpec(concept=target)
    expanded = ConceptSpec(concept=target, expand=True)  # what the service does with only the concept named
    keep = ConceptSpec(concept=target, preserve=tuple(s for s in SHAPES if s != target))
    extra = json.loads(args.ea_options)
    table = [
        ("ice_default", expanded, "ice", {}),
        ("ice_no_expand", plain, "ice", {}),
        ("ice", keep, "ice", {}),
        ("eraseanything", plain, "eraseanything", {"preset": "cpu-video", **extra}),
        ("eraseanything_no_temporal", plain, "eraseanything", {"preset": "cpu-video", **extra, "temporal_weight": 0.0}),
    ]
    wanted = set(args.rows.split(",")) if args.rows else {name for name, *_ in table}
    for name, spec, method, options in table:
        if name in wanted and not (args.skip_trained and method == "eraseanything"):
            rows.append(row(engine, name, spec, method, options, base_report))
    result = {"concept": target, "threads": args.threads, "steps": STEPS, "rows": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
