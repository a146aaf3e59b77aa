"""The fills demo world in Flux format: its committed weights and the assembly of its diffusers directory.

Same architecture classes and configurations as the shapes world (`flux_world.py`: a tiny `AutoencoderKL` and a
tiny `FluxTransformer2DModel`, MiniLM in both text-encoder slots, FLUX.1's scheduler), trained on `fills.py`. The
weights live in `weights/flux_fills/`; `assemble_fills_world` builds a folder `FluxPipeline.from_pretrained(path,
local_files_only=True)` loads with no network.
"""

from __future__ import annotations

from pathlib import Path

from erasure_core.worlds.flux_world import MODEL_INDEX, SCHEDULER_CONFIG, assemble_world

FILLS_WORLD_NAME = "demo-fills"
FILLS_WORLD_WEIGHTS = Path(__file__).parent / "weights" / "flux_fills"


def assemble_fills_world(cache_dir: Path | None = None, weights: Path = FILLS_WORLD_WEIGHTS) -> Path:
    """Assembles (or reuses) the diffusers directory of the fills world, `<cache>/demo-fills-<digest>`."""
    return assemble_world(FILLS_WORLD_NAME, weights, MODEL_INDEX, SCHEDULER_CONFIG, cache_dir)


def fills_preserve_corpus() -> list[str]:
    """The fills world's typical prompts: its preserve corpus.

    Every shape name in every colour and fill, in each fill template once per fill (rotating templates keeps the
    corpus at a few hundred prompts), plus every artist with every shape name. Synonyms and held-out words are left
    out on purpose, as in `flux_world.world_preserve_corpus`: the erasure tests measure how far an erasure reaches
    phrasings nobody named.
    """
    from erasure_core.worlds.fills import (
        ARTIST_OF,
        ARTIST_TEMPLATES,
        COLOR_NAMES,
        FILL_TEMPLATES,
        FILLS,
        SHAPES,
        caption,
    )

    corpus = [
        caption(s, c, f, (i + j + k) % len(FILL_TEMPLATES))
        for i, s in enumerate(SHAPES)
        for j, c in enumerate(COLOR_NAMES)
        for k, f in enumerate(FILLS)
    ]
    corpus += [
        caption(s, c, f, (i + j) % len(ARTIST_TEMPLATES), by_artist=True)
        for i, s in enumerate(SHAPES)
        for j, c in enumerate(COLOR_NAMES)
        for f in ARTIST_OF
    ]
    return corpus
