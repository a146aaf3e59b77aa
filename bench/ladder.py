"""Every strength of ICE's ladder, judged: what the self-check measured at each setting and what the judge saw.

The self-check picks one (eta, preserve_scale) of `LADDER` per concept from measurements on the model alone
(`erasure_core/methods/ice/selfcheck.py`). This bench shows the whole ladder beside the judge, which is what a change
to that choice must be weighed against: for every setting, the check's survival and drift and the judged target,
synonym and held-out rates and each other shape's change (the samples of `bench/preservation.py`: 24 of the target,
36 per other shape). It also marks the setting the service's default chose.

Usage: python bench/ladder.py [--worlds shapes fills] [--concepts crescent ...] [--threads 1] [--out ladder.json]
Both worlds are served as ordinary folders, only the concept is named, expansion is on (the service's defaults);
each setting is the same erasure with `eta` and `preserve_scale` given. About 2 minutes per concept on one thread.
"""

from __future__ import annotations

import logging
from typing import Any

from _common import run, world_parser
from preservation import _rates, world_concepts


def _erase(engine: Any, concept: str, options: dict[str, Any]) -> Any:
    from erasure_core.concepts import ConceptSpec

    return engine.erase(ConceptSpec(concept=concept, expand=True), method="ice", options=options)


def _judged(engine: Any, judge: Any, rows: list, options: dict[str, Any], concept: str) -> tuple[dict, dict]:
    """(judged rates, self-check stats) of the erasure of `concept` made with `options`."""
    artifact = _erase(engine, concept, options)
    engine.attach("ladder", artifact)
    try:
        rates = _rates(engine, judge, rows, ["ladder"])
    finally:
        engine.detach("ladder")
    return rates, artifact.metadata["stats"]


def run_world(name: str, concepts: list[str] | None) -> dict[str, Any]:
    from erasure_core.methods.ice.config import LADDER

    out: dict[str, Any] = {}
    for engine, judge, shapes, concept, rows, base in world_concepts(name, concepts):
        default = _erase(engine, concept, {}).metadata["stats"]  # the setting the service's default chooses
        settings = []
        for eta, preserve_scale in LADDER:
            rates, stats = _judged(engine, judge, rows, {"eta": eta, "preserve_scale": preserve_scale}, concept)
            settings.append(
                {
                    "eta": eta,
                    "preserve_scale": preserve_scale,
                    "chosen": (eta, preserve_scale) == (default["eta"], default["preserve_scale"]),
                    "self_check": stats["self_check"],
                    "erased": rates,
                    "others_change_pts": {g: round(100 * (rates[g] - base[g]), 1) for g in rates if g in shapes},
                }
            )
        out[concept] = {"base": base, "settings": settings}
        logging.getLogger("ladder").info("%s %s: %s", name, concept, out[concept])
    return out


def main() -> None:
    args = world_parser(__doc__).parse_args()
    run({}, lambda: {w: run_world(w, args.concepts) for w in args.worlds}, args.threads, args.out)


if __name__ == "__main__":
    main()
