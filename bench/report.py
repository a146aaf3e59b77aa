"""Erasure reports on both demo worlds, and the white-box attack against a weak and a strong erasure.

    python bench/report.py --threads 1 [--attack-steps 60] [--seeds 2] [--out report-bench.json]

Prints JSON: per case (world, concept, method, options) the report's headline figures (efficacy, robustness per
group, the attack's soft and projected rates and raise over the erased rate, usability, grid size) and seconds.
Cases: shapes/triangle ICE, fills/star ICE (compare with tests/test_quality_worlds.py), shapes/triangle UCE and
ICE eta 0 (weak), and the ICE default (the strongest method here) is the first case.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import torch

CASES = (
    ("shapes", "triangle", "ice", {}),
    ("fills", "star", "ice", {}),
    ("shapes", "triangle", "uce", {}),
    ("shapes", "triangle", "ice", {"eta": 0}),
)


def headline(data: dict) -> dict:
    def rates(section: dict) -> dict:
        return {g: {k: f.get(k) for k in ("base", "erased", "n", "accuracy_change_pts")} for g, f in section.items()}

    attack = data["robustness"].get("attack", {})
    keys = ("best_prompt_prefix", "best_rate", "erased_rate_without_attack", "raise_pts", "soft", "seconds", "found")
    return {
        "efficacy": rates(data["efficacy"]),
        "robustness": rates({g: f for g, f in data["robustness"].items() if g != "attack"}),
        "attack": {k: attack.get(k) for k in keys} | {"budget": attack.get("budget")},
        "usability": rates(data["usability"]),
        "grid": [data["grid"]["width"], data["grid"]["height"]],
        "judge": data["judge"],
        "seconds": data["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attack-steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cases", default="0,1,2,3", help="indices into CASES")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image

    from erasure_core.concepts import ConceptSpec
    from erasure_core.models import load_engine
    from erasure_core.reports import ReportConfig, build_report, get_judge
    from erasure_core.worlds.quality import WORLDS

    results, engines = [], {}
    for index in (int(i) for i in args.cases.split(",")):
        world, concept, method, options = CASES[index]
        quality = WORLDS[world]()
        if world not in engines:
            engines[world] = load_engine("flux", quality.model_source(None), device="cpu")
        engine = engines[world]
        case = next(c for c in quality.cases if c.concept == concept)
        artifact = engine.erase(ConceptSpec(concept=concept, kind=case.kind), method=method, options=options)
        started = time.perf_counter()
        config = ReportConfig(seeds=args.seeds, attack_steps=args.attack_steps)
        report = build_report(engine, artifact, get_judge("auto", engine.pipe.transformer), config)
        image = Image.open(io.BytesIO(report.grid_png))
        entry = {"world": world, "concept": concept, "method": method, "options": options}
        entry |= headline(report.data) | {
            "png_size": list(image.size),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        results.append(entry)
        sys.stderr.write(json.dumps(entry) + "\n")
    text = json.dumps(results, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
