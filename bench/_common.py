"""What the bench scripts share: quiet logging, the torch thread count, and one JSON result with its run time.

The scripts run as `python bench/<name>.py`, so this module is imported by its bare name (`from _common import ...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def world_engine(name: str, plain: bool = False) -> tuple[Any, Any]:
    """The quality world `name` and its model loaded on the CPU; `plain` serves an embedded world as an ordinary folder
    (no bundled preserve corpus: a model the project has never seen)."""
    from erasure_core.models import load_engine
    from erasure_core.worlds.flux_world import assemble_flux_world
    from erasure_core.worlds.quality import WORLDS

    world = WORLDS[name]()
    source = world.model_source(None)
    if plain and source == "demo":
        source = str(assemble_flux_world(None))
    return world, load_engine("flux", source, device="cpu")


SHAPES_HELP = "only these shapes (default: every shape)"


def add_options(parser: argparse.ArgumentParser, what: str) -> None:
    """`--options JSON`: method options added to every erasure the bench makes (over its own defaults)."""
    parser.add_argument("--options", type=json.loads, default={}, help=f"{what} options as JSON (default: none)")


def world_parser(doc: str | None, concepts: str = SHAPES_HELP) -> argparse.ArgumentParser:
    """A parser described by the first line of a script's docstring, with the options every per-world bench takes:
    --worlds, --concepts, --threads, --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--worlds", nargs="+", default=["shapes", "fills"])
    parser.add_argument("--concepts", nargs="*", default=None, help=concepts)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def run(settings: dict[str, Any], worlds: Callable[[], dict[str, Any]], threads: int, out: Path | None) -> None:
    """Sets up logging and `threads` torch threads (0: torch's default), runs `worlds()`, and prints (and writes to
    `out`) {"settings": ..., "worlds": ..., "runtime_s": ...}."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("erasure_core", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    result: dict[str, Any] = {"settings": {**settings, "threads": torch.get_num_threads()}, "worlds": worlds()}
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text)
    print(text)
