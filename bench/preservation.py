"""What an erasure costs the other shapes, measured with enough samples to see a few points.

`bench/quality.py` judges 6 samples per other shape (2 seeds), so one sample is 16.7 points; this bench judges 36 per
other shape over every colour and caption template (one sample is 2.8 points), 24 of the target and 8 per synonym and
held-out word, with the same seeds before and after the erasure.

Usage: python bench/preservation.py [--worlds shapes fills] [--concepts triangle star ...] [--no-expand]
                                    [--options '{"eta": 2}'] [--threads 1] [--out preservation.json]
Both worlds are served as ordinary folders (no bundled preserve corpus: a model the project has never seen), only
the concept is named. Prints one JSON object: per world and concept, the base and erased rates of the target,
synonyms and held-out words, each other shape's change in points, the strength ICE chose (`eta`, `preserve_scale`,
the settings it tried) and the seconds the erasure took.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import add_options, run, world_parser

OTHER_SAMPLES = 36
TARGET_SAMPLES = 24
WORD_SAMPLES = 8


def _world(name: str) -> tuple[str, Callable[[str, int], str], tuple[str, ...], dict, dict]:
    """(model source, caption(shape word, i), shapes, synonyms, held-out words) of a demo world."""
    if name == "shapes":
        from erasure_core.worlds import shapes as sw
        from erasure_core.worlds.flux_world import assemble_flux_world

        return str(assemble_flux_world(None)), sw.varied_caption, sw.SHAPES, sw.SYNONYMS, sw.HELDOUT_WORDS
    from erasure_core.worlds import fills as fw
    from erasure_core.worlds.fills_world import assemble_fills_world

    return str(assemble_fills_world(None)), fw.varied_caption, fw.SHAPES, fw.SYNONYMS, fw.HELDOUT_WORDS


def _rows(concept: str, caption: Callable[[str, int], str], shapes, synonyms, heldout) -> list[tuple[str, str, str]]:
    """(prompt, group, shape asked) rows: target, synonyms, held-out words, then every other shape."""
    rows = [(caption(concept, i), "target", concept) for i in range(TARGET_SAMPLES)]
    rows += [(caption(w, i), "synonym", concept) for w in synonyms[concept] for i in range(WORD_SAMPLES)]
    rows += [(caption(w, i), "heldout_word", concept) for w in heldout[concept] for i in range(WORD_SAMPLES)]
    rows += [(caption(o, i), o, o) for o in shapes if o != concept for i in range(OTHER_SAMPLES)]
    return rows


def _rates(engine: Any, judge: Callable, rows: list[tuple[str, str, str]], erasures: list[str]) -> dict[str, float]:
    """Per group: the share of samples the judge sees as the shape the row asked for."""
    from erasure_core.worlds.evaluation import engine_generator

    images = engine_generator(engine, erasures)([r[0] for r in rows], list(range(7000, 7000 + len(rows))))
    seen = judge(images)["shape"]
    hits: dict[str, list[bool]] = {}
    for (_, group, asked), shape in zip(rows, seen, strict=True):
        hits.setdefault(group, []).append(shape == asked)
    return {g: round(sum(h) / len(h), 3) for g, h in hits.items()}


Measured = tuple[Any, Callable, tuple[str, ...], str, list, dict]  # engine, judge, shapes, concept, rows, base rates


def world_concepts(name: str, concepts: list[str] | None) -> Iterator[Measured]:
    """(engine, judge, shapes, concept, rows, base rates) for each concept measured on world `name`, the world served
    as an ordinary folder."""
    from erasure_core.models import load_engine
    from erasure_core.worlds.quality import WORLDS

    source, caption, shapes, synonyms, heldout = _world(name)
    judge = WORLDS[name]().judge
    engine = load_engine("flux", source, device="cpu")
    for concept in (c for c in shapes if concepts is None or c in concepts):
        rows = _rows(concept, caption, shapes, synonyms, heldout)
        yield engine, judge, shapes, concept, rows, _rates(engine, judge, rows, [])


def run_world(name: str, concepts: list[str] | None, expand: bool, options: dict[str, Any]) -> dict[str, Any]:
    from erasure_core.concepts import ConceptSpec

    out: dict[str, Any] = {}
    for engine, judge, shapes, concept, rows, base in world_concepts(name, concepts):
        started = time.perf_counter()
        artifact = engine.erase(ConceptSpec(concept=concept, expand=expand), method="ice", options=options)
        seconds = time.perf_counter() - started
        engine.attach("measured", artifact)
        try:
            erased = _rates(engine, judge, rows, ["measured"])
        finally:
            engine.detach("measured")
        stats = artifact.metadata.get("stats", {})
        others = {g: round(100 * (erased[g] - base[g]), 1) for g in erased if g in shapes}
        out[concept] = {
            "base": base,
            "erased": erased,
            "others_change_pts": others,
            "others_worst_change_pts": min(others.values()),
            "strength": {k: stats.get(k) for k in ("eta", "preserve_scale")},
            "calibration": stats.get("calibration"),
            "phrasings": artifact.metadata.get("phrasings"),
            "neighbours": stats.get("neighbours"),
            "seconds": round(seconds, 2),
        }
        logging.getLogger("preservation").info("%s %s: %s", name, concept, out[concept])
    return out


def main() -> None:
    parser = world_parser(__doc__)
    parser.add_argument("--expand", action=argparse.BooleanOptionalAction, default=True)
    add_options(parser, "ICE")
    args = parser.parse_args()
    run(
        {"expand": args.expand, "options": args.options},
        lambda: {w: run_world(w, args.concepts, args.expand, args.options) for w in args.worlds},
        args.threads,
        args.out,
    )


if __name__ == "__main__":
    main()
