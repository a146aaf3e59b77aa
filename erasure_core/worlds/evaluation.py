"""Judging the demo world over fixed seeds: per-shape, per-synonym and per-colour rates.

The same prompts and seeds are used for the base model and every erasure, so differences are caused by the
erasure alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from erasure_core.worlds.judge import SHAPE_CLASSES, ShapeJudge, judge_images, load_judge
from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES, caption, shape_words

Generate = Callable[[list[str], list[int]], torch.Tensor]


class Generates(Protocol):
    """What evaluation needs of an engine (`erasure_core.engines.ErasureEngine` is one)."""

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], params: Any = None, erasures: Iterable[str] = ()
    ) -> torch.Tensor: ...


EVAL_TEMPLATES = (0, 2, 4)


@dataclass(frozen=True)
class Sample:
    prompt: str
    shape: str
    word: str
    color: str
    seed: int


def build_samples(
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLOR_NAMES,
    seeds_per_prompt: int = 1,
    templates: Sequence[int] = EVAL_TEMPLATES,
    include_synonyms: bool = True,
    first_seed: int = 1000,
) -> list[Sample]:
    """Fixed evaluation samples: every shape word x colour x template x seed, with deterministic seeds."""
    samples: list[Sample] = []
    for shape in shapes:
        words = shape_words(shape) if include_synonyms else (shape,)
        for word in words:
            for color in colors:
                for t in templates:
                    for s in range(seeds_per_prompt):
                        seed = first_seed + len(samples)
                        samples.append(Sample(caption(word, color, t), shape, word, color, seed))
                        _ = s
    return samples


@dataclass
class WorldReport:
    """Judged rates. `word_rate[word]` = fraction of that word's prompts judged as the word's shape."""

    word_rate: dict[str, float]
    shape_accuracy: dict[str, float]
    color_accuracy: dict[str, float]
    judged_as: dict[str, dict[str, float]]  # shape -> judged class -> fraction (name prompts only)

    @property
    def mean_shape_accuracy(self) -> float:
        return sum(self.shape_accuracy.values()) / len(self.shape_accuracy)

    @property
    def mean_color_accuracy(self) -> float:
        return sum(self.color_accuracy.values()) / len(self.color_accuracy)

    def rate_of(self, words: Sequence[str]) -> float:
        return sum(self.word_rate[w] for w in words) / len(words)


def judge_samples(generate: Generate, samples: Sequence[Sample], judge: ShapeJudge | None = None) -> WorldReport:
    """Generates every sample, judges it, and aggregates the rates."""
    judge = judge or load_judge()
    images = generate([s.prompt for s in samples], [s.seed for s in samples])
    verdict = judge_images(images, judge)
    word_hits: dict[str, list[bool]] = defaultdict(list)
    color_hits: dict[str, list[bool]] = defaultdict(list)
    judged: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for sample, shape_idx, color_idx in zip(samples, verdict.shapes.tolist(), verdict.colors.tolist(), strict=True):
        judged_shape = SHAPE_CLASSES[shape_idx]
        word_hits[sample.word].append(judged_shape == sample.shape)
        color_hits[sample.color].append(COLOR_NAMES[color_idx] == sample.color)
        if sample.word == sample.shape:
            judged[sample.shape][judged_shape] += 1
    word_rate = {w: sum(h) / len(h) for w, h in word_hits.items()}
    shapes = sorted({s.shape for s in samples}, key=SHAPES.index)
    judged_as = {s: {k: v / sum(judged[s].values()) for k, v in judged[s].items()} for s in shapes if judged[s]}
    return WorldReport(
        word_rate=word_rate,
        shape_accuracy={s: word_rate[s] for s in shapes if s in word_rate},
        color_accuracy={c: sum(h) / len(h) for c, h in color_hits.items()},
        judged_as=judged_as,
    )


def engine_generator(engine: Generates, erasures: Sequence[str] = (), batch: int = 96) -> Generate:
    """A `Generate` callable over an engine with a fixed erasure set, in bounded batches."""

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        chunks = [
            engine.generate(prompts[i : i + batch], seeds[i : i + batch], erasures=erasures)
            for i in range(0, len(prompts), batch)
        ]
        return torch.cat(chunks)

    return generate


def erasure_samples(targets: Sequence[str], seeds_per_prompt: int = 4) -> list[Sample]:
    """Samples for an erasure check: every word of the target shapes, and the names of all other shapes."""
    samples = build_samples(targets, seeds_per_prompt=seeds_per_prompt, include_synonyms=True)
    others = [s for s in SHAPES if s not in targets]
    samples += build_samples(others, seeds_per_prompt=seeds_per_prompt, include_synonyms=False, first_seed=50_000)
    return samples
