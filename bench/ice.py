"""ICE benchmark: (a) seconds per edit at real Flux dimensions; (b) the demo-world table ICE vs UCE vs none.

Usage: python bench/ice.py [--skip-table] [--shapes triangle cross] [--seeds 2] [--eta 2 4] [--many 100]
                           [--instant [shapes fills]]
Prints one JSON object. (a) times the closed-form solve and the low-rank deltas for Flux's two text layers
(context_embedder 4096 -> 3072, text_embedder.linear_1 768 -> 3072) from 1,000 erase and 10,000 preserve token
embeddings with random weights, excluding text encoding; target <= 1 s on this machine. (b) erases each shape with
ICE (its defaults: no anchor, so eta resolves to 2) and with a UCE closed form on the same rows, over the same
seeds, and judges the samples; `--eta` adds ICE rows with that eta forced (`--eta 0`: onto the placeholder).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.kernel import dissociation_operator, layer_delta

SPACES = {"context_embedder": 4096, "time_text_embed.text_embedder.linear_1": 768}
HIDDEN = 3072


def _embeddings(n: int, d: int, rank: int, g: torch.Generator) -> torch.Tensor:
    """Structured rows like text-encoder states: a low-rank signal, a shared mean, and noise."""
    basis = torch.randn(rank, d, generator=g) / d**0.5
    return (
        torch.randn(n, rank, generator=g) @ basis
        + 0.05 * torch.randn(d, generator=g)
        + 0.01 * torch.randn(n, d, generator=g)
    )


def time_real_dims(repeats: int = 3) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    cfg = ICEConfig()
    weights = {name: torch.randn(HIDDEN, d, generator=g) / d**0.5 for name, d in SPACES.items()}
    inputs = {}
    for name, d in SPACES.items():
        x_a = _embeddings(1000, d, 256, g)  # anchor-side states
        x_c = x_a + _embeddings(1000, d, 24, g)  # the concept adds a low-rank displacement
        inputs[name] = (x_c, x_a, _embeddings(10_000, d, 256, g))

    def run() -> None:
        for name, (x_c, x_a, x_p) in inputs.items():
            v, m = dissociation_operator(x_c, x_a, x_p, **cfg.kernel_kwargs())
            layer_delta(weights[name], v, m)

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "target_s": 1.0,
        "erase_rows": 1000,
        "preserve_rows": 10_000,
        "threads": torch.get_num_threads(),
    }


def demo_table(shapes: list[str], seeds: int, etas: list[float]) -> dict[str, object]:
    from erasure_core.concepts import ConceptSpec
    from erasure_core.models import load_engine
    from erasure_core.worlds.evaluation import engine_generator, erasure_samples, judge_samples
    from erasure_core.worlds.judge import load_judge
    from erasure_core.worlds.shapes import SHAPES, SYNONYMS

    engine = load_engine("flux", device="cpu")
    judge = load_judge()
    rows: dict[str, dict[str, float]] = {}
    per_shape: dict[str, dict[str, dict[str, float]]] = {}
    variants: list[tuple[str, str, dict[str, float]]] = [("none", "none", {}), ("uce", "uce", {}), ("ice", "ice", {})]
    variants += [(f"ice_eta{eta:g}", "ice", {"eta": eta}) for eta in etas]
    for label, method, options in variants:
        totals: dict[str, list[float]] = {"target": [], "unnamed_synonyms": [], "preserved": [], "color": [], "s": []}
        for shape in shapes:
            named, unnamed = SYNONYMS[shape][:1], list(SYNONYMS[shape][1:])
            samples = erasure_samples([shape], seeds_per_prompt=seeds)
            erasures: list[str] = []
            if method != "none":
                start = time.perf_counter()
                spec = ConceptSpec(concept=shape, synonyms=named, expand=True)
                artifact = engine.erase(spec, method=method, options=options)
                totals["s"].append(time.perf_counter() - start)
                engine.attach(f"{label}-{shape}", artifact)
                erasures = [f"{label}-{shape}"]
            report = judge_samples(engine_generator(engine, erasures), samples, judge)
            others = [s for s in SHAPES if s != shape]
            figures = {
                "target": report.word_rate[shape],
                "unnamed_synonyms": report.rate_of(unnamed),
                "preserved": sum(report.word_rate[s] for s in others) / len(others),
                "color": report.mean_color_accuracy,
            }
            per_shape.setdefault(label, {})[shape] = {k: round(v, 3) for k, v in figures.items()}
            for key, value in figures.items():
                totals[key].append(value)
        rows[label] = {k: round(sum(v) / len(v), 3) for k, v in totals.items() if v}
    return {"shapes": shapes, "seeds_per_prompt": seeds, "mean": rows, "per_shape": per_shape}


def _shape_rates(verdicts: dict, names: tuple[str, ...], per_shape: int) -> dict[str, float]:
    """Each shape's judged rate over its block of `per_shape` consecutive samples."""
    shape = verdicts["shape"]
    return {s: sum(v == s for v in shape[k * per_shape : (k + 1) * per_shape]) / per_shape for k, s in enumerate(names)}


def many_concepts(count: int = 100, worlds: tuple[str, ...] = ("shapes", "fills"), per_shape: int = 24) -> dict:
    """Per demo world, one ICE erasure of `count` concepts as the service makes it (the world's first two shapes
    plus vocabulary words it never draws, expansion on), warm: seconds (median of 3), and every shape of the world
    judged before and after on `per_shape` captions each (fixed seeds): its rate, and the share of samples whose
    colour (and fill) verdict the erasure changed."""
    import random

    from _common import world_engine

    from erasure_core.concepts import ConceptSpec
    from erasure_core.worlds import fills, shapes
    from erasure_core.worlds.evaluation import engine_generator

    out: dict[str, object] = {}
    for name in worlds:
        world, engine = world_engine(name)
        data = shapes if name == "shapes" else fills  # each world's shapes and its run of varied captions
        names = data.SHAPES
        vocab = sorted(w for w in engine.pipe.tokenizer_2.get_vocab() if w.isalpha() and len(w) > 4)
        random.Random(0).shuffle(vocab)
        also = (names[1], *[w for w in vocab if w not in names][: count - 2])
        spec = ConceptSpec(concept=names[0], also=also, expand=True)
        prompts = [data.varied_caption(s, i) for s in names for i in range(per_shape)]
        seeds = list(range(9000, 9000 + len(prompts)))
        base = world.judge(engine_generator(engine)(prompts, seeds))
        engine.prepare()  # the caches a served model fills while warming up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            artifact = engine.erase(spec)
            times.append(time.perf_counter() - start)
        engine.attach("many", artifact)
        erased = world.judge(engine_generator(engine, ["many"])(prompts, seeds))
        before, after = _shape_rates(base, names, per_shape), _shape_rates(erased, names, per_shape)
        out[name] = {
            "concepts": count,
            "erased_shapes": list(names[:2]),
            "median_s": round(statistics.median(times), 2),
            "shape_rates": {s: [round(before[s], 3), round(after[s], 3)] for s in names},
            "points": {s: round(100 * (after[s] - before[s]), 1) for s in names},
            "verdicts_changed": {
                f: round(sum(a != b for a, b in zip(base[f], erased[f], strict=True)) / len(prompts), 3)
                for f in base
                if f != "shape"
            },
            "samples_per_shape": per_shape,
            "stats": {k: artifact.metadata["stats"].get(k) for k in ("ranks", "eta", "neighbours", "self_check")},
        }
    return out


def instant(worlds: list[str]) -> dict[str, object]:
    """Seconds of the default ICE erasure as the service makes it (only the concept named, expansion and the
    self-check on) of every shape of each demo world, on a warm model (`prepare`, as the service's warm-up does), and
    where the time went (`encode_s`: expansion and encoding the prompts; `solve_s`: the probe, the ladder's solves
    and checks)."""
    from erasure_core.concepts import ConceptSpec
    from erasure_core.models import load_engine
    from erasure_core.worlds import fills, shapes
    from erasure_core.worlds.fills_world import assemble_fills_world

    out: dict[str, object] = {}
    for world in worlds:
        source, names = (
            ("demo", shapes.SHAPES) if world == "shapes" else (str(assemble_fills_world(None)), fills.SHAPES)
        )
        engine = load_engine("flux", source, device="cpu")
        engine.prepare()
        rows = {}
        for shape in names:
            start = time.perf_counter()
            stats = engine.erase(ConceptSpec(concept=shape, expand=True)).metadata["stats"]
            rows[shape] = {
                "seconds": round(time.perf_counter() - start, 2),
                "encode_s": stats["encode_s"],
                "solve_s": stats["solve_s"],
                "settings_tried": len(stats.get("calibration", [])) or 1,
                "erase_prompts": stats["erase_prompts"],
                "preserve_prompts": stats["preserve_prompts"],
            }
        seconds = [r["seconds"] for r in rows.values()]
        out[world] = {"per_shape": rows, "median_s": round(statistics.median(seconds), 2), "max_s": max(seconds)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--shapes", nargs="+", default=["circle", "square", "triangle", "cross", "diamond"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eta", type=float, nargs="*", default=[], help="extra ICE rows with these eta values")
    parser.add_argument(
        "--many", type=int, default=0, help="also time and judge one erasure of this many concepts (100) per world"
    )
    parser.add_argument(
        "--instant",
        nargs="*",
        default=None,
        help="also time the default erasure of every shape of these worlds (shapes fills), warm",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, object] = {"real_dims_edit": time_real_dims()}
    if args.many:
        result["many_concepts"] = many_concepts(args.many)
    if args.instant is not None:
        result["instant"] = instant(args.instant or ["shapes", "fills"])
    if not args.skip_table:
        result["demo_table"] = demo_table(args.shapes, args.seeds, args.eta)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
