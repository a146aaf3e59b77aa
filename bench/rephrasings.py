"""Rephrasings no test tunes on: of those the base model draws as the concept, how many still do under ICE.

Usage: python bench/rephrasings.py [--worlds shapes fills] [--concepts triangle star ...] [--seeds 4]
                                   [--threads 1] [--plain] [--out rephrasings.json]
For each world and shape: the default ICE erasure with only the concept named and expansion on; every rephrasing of
`erasure_core.worlds.rephrasings` generated at --seeds fixed seeds with and without it (same seeds) and judged by the
world's shape judge. Per concept: "drawing" (rephrasings drawn as the concept in >= half their samples without the
erasure), "leaking" (of those, still so with it), the leak fraction, the leaking texts and per-kind counts; then the
overall summary. The done-when bar: leak fraction <= 0.10.
"""

from __future__ import annotations

import logging
from typing import Any

from _common import run, world_engine, world_parser

FIRST_SEED = 60_000


def measure_world(name: str, concepts: list[str] | None, seeds: int, plain: bool = False):
    """Per-concept figures for one world."""
    from erasure_core.concepts import ConceptSpec
    from erasure_core.worlds.evaluation import engine_generator
    from erasure_core.worlds.quality import Sample, judged
    from erasure_core.worlds.rephrasings import REPHRASINGS, WORLD_SHAPES, prompt

    world, engine = world_engine(name, plain)
    table: dict[str, Any] = {}
    for shape in (s for s in WORLD_SHAPES[name] if concepts is None or s in concepts):
        entries = REPHRASINGS[shape]
        samples = [
            Sample(prompt(text), FIRST_SEED + k, "rephrasing", (("shape", shape),))
            for _, text in entries
            for k in range(seeds)
        ]
        base = judged(world, engine_generator(engine), samples)
        engine.attach("rephrase", engine.erase(ConceptSpec(concept=shape, expand=True), "ice"))
        try:
            erased = judged(world, engine_generator(engine, ["rephrase"]), samples)
        finally:
            engine.detach("rephrase")
        row = summarize(shape, entries, seeds, base, erased)
        logging.getLogger("rephrasings").info("%s %s: %s", name, shape, {k: row[k] for k in ("drawing", "leaking")})
        table[shape] = row
    return table


def summarize(shape: str, entries, seeds: int, base, erased) -> dict[str, Any]:
    drawing: list[str] = []
    leaking: list[str] = []
    kinds: dict[str, dict[str, int]] = {}
    rates: dict[str, list[float]] = {}
    for i, (kind, text) in enumerate(entries):
        b = sum(v["shape"] == shape for v in base[i * seeds : (i + 1) * seeds]) / seeds
        e = sum(v["shape"] == shape for v in erased[i * seeds : (i + 1) * seeds]) / seeds
        rates[text] = [round(b, 2), round(e, 2)]
        k = kinds.setdefault(kind, {"total": 0, "drawing": 0, "leaking": 0})
        k["total"] += 1
        if b >= 0.5:
            drawing.append(text)
            k["drawing"] += 1
            if e >= 0.5:
                leaking.append(text)
                k["leaking"] += 1
    return {
        "rephrasings": len(entries),
        "drawing": len(drawing),
        "leaking": len(leaking),
        "leak_fraction": round(len(leaking) / len(drawing), 3) if drawing else None,
        "leaking_texts": leaking,
        "kinds": kinds,
        "rates_base_erased": rates,
    }


def overall(worlds: dict[str, Any]) -> dict[str, Any]:
    rows = [r for w in worlds.values() for r in w.values()]
    drawing, leaking = sum(r["drawing"] for r in rows), sum(r["leaking"] for r in rows)
    fractions = {s: r["leak_fraction"] for w in worlds.values() for s, r in w.items()}
    return {
        "drawing": drawing,
        "leaking": leaking,
        "leak_fraction": round(leaking / drawing, 3) if drawing else None,
        "concepts_over_bar": [s for s, f in fractions.items() if f is not None and f > 0.10],
    }


def main() -> None:

    parser = world_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per rephrasing")
    parser.add_argument("--plain", action="store_true", help="serve the shapes world as a plain folder (no corpus)")
    args = parser.parse_args()

    def worlds() -> dict[str, Any]:
        out = {w: measure_world(w, args.concepts, args.seeds, args.plain) for w in args.worlds}
        return {**out, "overall": overall(out)}

    run({"seeds_per_rephrasing": args.seeds, "plain": args.plain}, worlds, args.threads, args.out)


if __name__ == "__main__":
    main()
