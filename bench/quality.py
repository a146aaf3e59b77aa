"""Quality table: every demo world x concept x method, judged, with only the concept named and default settings.

Usage: python bench/quality.py [--worlds shapes fills] [--methods none uce ice] [--concepts triangle red ...]
                               [--seeds 2] [--threads 1] [--plain] [--options JSON]
                               [--out quality.json]
Prints one JSON object (and writes it to --out): per world and concept, per method, the judged rates of the groups
of `erasure_core.worlds.quality` (target, synonym = unnamed in-training synonyms, heldout_word, heldout_template,
other), the worst and per-value change of the concept's other values in points, the change of the other factors,
and the seconds the erasure took; then per world and method the means. Methods: `none` (the base model), `uce`,
`ice`, `ice_expand` (ICE with `expand: true`), `eraseanything` (cpu preset; minutes per concept).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from _common import add_options, run, world_engine, world_parser

METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "uce": ("uce", {}, False),
    "ice": ("ice", {}, False),
    "ice_expand": ("ice", {}, True),
    "eraseanything": ("eraseanything", {"preset": "cpu"}, False),
    "co-erasing": ("co-erasing", {"preset": "cpu"}, False),
    "bi-erasing": ("bi-erasing", {"preset": "cpu"}, False),
}


def run_world(
    name: str,
    methods: list[str],
    concepts: list[str] | None,
    seeds: int,
    plain: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from erasure_core.concepts import ConceptSpec
    from erasure_core.worlds.evaluation import engine_generator
    from erasure_core.worlds.quality import FACTORS, CaseResult, compare, judged, rates

    world, engine = world_engine(name, plain)
    cases = [c for c in world.cases if concepts is None or c.concept in concepts]
    table: dict[str, dict[str, Any]] = {}
    for case in cases:
        samples = world.samples(case, seeds)
        base = judged(world, engine_generator(engine), samples)
        row: dict[str, Any] = {"kind": case.kind, "samples": len(samples)}
        if "none" in methods:
            row["none"] = CaseResult(rates(case, samples, base), {}, {}).summary()
        for label in (m for m in methods if m != "none"):
            method, options, expand = METHODS[label]
            started = time.perf_counter()
            spec = ConceptSpec(concept=case.concept, kind=case.kind, expand=expand)
            artifact = engine.erase(spec, method=method, options={**options, **(extra or {})})
            seconds = time.perf_counter() - started
            engine.attach(f"{label}-{case.concept}", artifact)
            erased = judged(world, engine_generator(engine, [f"{label}-{case.concept}"]), samples)
            engine.detach(f"{label}-{case.concept}")
            result = compare(case, samples, base, erased, FACTORS[name])
            result.seconds = seconds
            stats = artifact.metadata.get("stats", {})
            result.extra = {
                "phrasings": artifact.metadata.get("phrasings", []),
                "neighbours": stats.get("neighbours", []),
                "self_check": stats.get("self_check"),
                "strength": {k: stats[k] for k in ("eta", "preserve_scale") if k in stats},
            }
            row[label] = result.summary()
            logging.getLogger("quality").info("%s %s %s: %s", name, case.concept, label, row[label])
        table[case.concept] = row
    return {"concepts": table, "means": _means(table, methods)}


def _means(table: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label in methods:
        keys = ("target", "synonym", "heldout_word", "heldout_template", "others_worst_change_pts", "seconds")
        means = {}
        for key in keys:
            values = [row[label][key] for row in table.values() if label in row and key in row[label]]
            if values:
                means[key] = round(statistics.fmean(values), 3)
        out[label] = means
    return out


def main() -> None:
    parser = world_parser(__doc__, concepts="only these concepts (default: every case)")
    parser.add_argument("--methods", nargs="+", default=["none", "uce", "ice"])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="serve the shapes world as an ordinary folder, without its bundled preserve corpus (as the fills world "
        "always is): a model the project has never seen",
    )
    add_options(parser, "every method's")
    args = parser.parse_args()
    run(
        {"methods": args.methods, "seeds_per_prompt": args.seeds, "plain": args.plain, "options": args.options},
        lambda: {
            w: run_world(w, args.methods, args.concepts, args.seeds, args.plain, args.options) for w in args.worlds
        },
        args.threads,
        args.out,
    )


if __name__ == "__main__":
    main()
