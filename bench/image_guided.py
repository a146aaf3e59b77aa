"""Image-guided erasure (Co-Erasing, Bi-Erasing) on both demo worlds, judged: the issue's bars, in one JSON.

Usage: python bench/image_guided.py [--worlds shapes fills] [--methods co-erasing bi-erasing]
                                    [--images generated uploaded] [--anchor circle:heart] [--seeds 2] [--threads 1]
                                    [--options JSON]
Per world (shapes: triangle; fills: star), method and image source ("generated": the job draws its references;
"uploaded": 8 renders of the shape given as `reference_images`, as a caller would upload them), with only the
concept named: the groups of `erasure_core.worlds.quality` (target, synonym = unnamed in-training synonyms,
heldout_word, heldout_template, other), the worst change of the other shapes and of colour in points, the judge's
"none" rate on target samples, and the job's seconds. `--anchor` adds a Bi-Erasing run per world with that anchor
named (shapes:fills, e.g. circle:heart) and reports how often target samples draw it (the issue: >= 70%).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import time
from typing import Any

import torch
from _common import add_options, run

CONCEPTS = {"shapes": "triangle", "fills": "star"}


def renders(world: str, shape: str, n: int = 8, size: int = 32) -> list[str]:
    """n renders of the shape in rotating colours (and fills), as base64 PNGs: what a caller would upload."""
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(11)
    centers = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * size / 4
    radii = size * (0.25 + 0.1 * torch.rand(n, generator=g))
    if world == "shapes":
        from erasure_core.worlds import shapes as w

        images = w.render(torch.full((n,), w.SHAPES.index(shape)), torch.arange(n) % 6, centers, radii, torch.zeros(n))
    else:
        from erasure_core.worlds import fills as f

        kinds, colors, fills = torch.full((n,), f.SHAPES.index(shape)), torch.arange(n) % 5, torch.arange(n) % 5
        images = f.render(kinds, colors, fills, centers, radii, torch.zeros(n))
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def run_world(
    name: str,
    methods: list[str],
    sources: list[str],
    anchor: str | None,
    seeds: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from erasure_core.concepts import ConceptSpec
    from erasure_core.models import load_engine
    from erasure_core.worlds.evaluation import engine_generator
    from erasure_core.worlds.quality import FACTORS, WORLDS, CaseResult, compare, judged, rates

    world = WORLDS[name]()
    engine = load_engine("flux", world.model_source(None), device="cpu")
    case = next(c for c in world.cases if c.concept == CONCEPTS[name])
    samples = world.samples(case, seeds)
    base = judged(world, engine_generator(engine), samples)
    target = [i for i, s in enumerate(samples) if s.group == "target"]
    out: dict[str, Any] = {"concept": case.concept, "samples": len(samples)}
    out["none"] = CaseResult(rates(case, samples, base), {}, {}).summary() | _target_stats(base, target, anchor)
    runs: list[tuple[str, str, str | None]] = [(m, src, None) for m in methods for src in sources]
    if anchor:
        runs.append(("bi-erasing", "generated", anchor))
    for method, source, named in runs:
        options: dict[str, Any] = {"preset": "cpu", **(extra or {})}
        if source == "uploaded":
            options["reference_images"] = renders(name, case.value)
        spec = ConceptSpec(concept=case.concept, kind=case.kind, anchor=named)
        started = time.perf_counter()
        artifact = engine.erase(spec, method=method, options=options)
        seconds = time.perf_counter() - started
        engine.attach("x", artifact)
        erased = judged(world, engine_generator(engine, ["x"]), samples)
        engine.detach("x")
        result = compare(case, samples, base, erased, FACTORS[name])
        result.seconds = seconds
        label = f"{method}/{source}" + (f"/anchor={named}" if named else "")
        out[label] = result.summary() | _target_stats(erased, target, named) | {"stats": artifact.metadata["stats"]}
        logging.getLogger("image_guided").info("%s %s: %s", name, label, out[label])
    return out


def _target_stats(verdicts: list[dict[str, str]], target: list[int], anchor: str | None) -> dict[str, float]:
    shapes = [verdicts[i]["shape"] for i in target]
    stats = {"target_none_rate": round(shapes.count("none") / len(shapes), 3)}
    if anchor:
        stats["target_anchor_rate"] = round(shapes.count(anchor) / len(shapes), 3)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["shapes", "fills"])
    parser.add_argument("--methods", nargs="+", default=["co-erasing", "bi-erasing"])
    parser.add_argument("--images", nargs="+", default=["generated", "uploaded"])
    parser.add_argument("--anchor", default="circle:heart", help="shapes:fills anchors for the named-anchor run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--threads", type=int, default=1)
    add_options(parser, "every job's")
    args = parser.parse_args()
    anchors = dict(zip(("shapes", "fills"), args.anchor.split(":"), strict=True)) if args.anchor else {}
    run(
        {"seeds_per_prompt": args.seeds, "options": args.options},
        lambda: {
            w: run_world(w, args.methods, args.images, anchors.get(w), args.seeds, args.options) for w in args.worlds
        },
        args.threads,
        None,
    )


if __name__ == "__main__":
    main()
