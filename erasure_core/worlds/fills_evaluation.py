"""Judging the fills world over fixed seeds: per-shape, per-colour, per-fill, per-artist and per-word rates.

Works on any `Generate` callable (prompts, seeds -> images [N, 3, H, W] in [0, 1]), so the same samples judge the
base model and every erasure; differences are then caused by the erasure alone. Sample groups:

* "name": the shape by its name, the fill by its word or by its artist (training templates);
* "synonym": the shape by a training synonym;
* "heldout_word": the shape by a held-out word (`fills.HELDOUT_WORDS`), in training templates;
* "heldout_fill": the fill by a held-out fill word (`fills.HELDOUT_FILL_WORDS`), in held-out templates;
* "heldout_template": the shape by its name in held-out templates (fill words and artists).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from erasure_core.worlds.fills import (
    ARTIST_OF,
    COLOR_NAMES,
    FILLS,
    HELDOUT_ARTIST_TEMPLATES,
    HELDOUT_FILL_WORDS,
    HELDOUT_TEMPLATES,
    HELDOUT_WORDS,
    SHAPES,
    SYNONYMS,
    caption,
)
from erasure_core.worlds.fills_judge import SHAPE_CLASSES, FillsJudge, judge_fills, load_fills_judge

Generate = Callable[[list[str], list[int]], torch.Tensor]
GROUPS = ("name", "synonym", "heldout_word", "heldout_fill", "heldout_template")


@dataclass(frozen=True)
class FillSample:
    """One prompt and seed with what it asks for. `artist` is set when the prompt names the fill by its artist."""

    prompt: str
    shape: str
    word: str
    color: str
    fill: str
    artist: str | None
    seed: int
    group: str
    fill_word: str | None = None  # the word that names the fill (None when named by the artist)


def build_fills_samples(
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLOR_NAMES,
    fills: Sequence[str] = FILLS,
    groups: Sequence[str] = ("name", "synonym"),
    seeds_per_prompt: int = 1,
    first_seed: int = 1000,
) -> list[FillSample]:
    """Fixed evaluation samples with deterministic seeds and rotating templates.

    "name": every shape x colour x fill, once with the fill's word and once with its artist. "synonym" and
    "heldout_word": every such word x colour, the fill rotating, named by its word. "heldout_fill": every held-out
    fill word x shape, the colour rotating. "heldout_template": every held-out template x shape x colour, the fill
    rotating (artist templates included).
    """
    out: list[FillSample] = []

    def add(prompt: str, shape: str, word: str, color: str, fill: str, group: str, by_artist: bool, fw: str | None):
        for _ in range(seeds_per_prompt):
            artist = ARTIST_OF[fill] if by_artist else None
            out.append(FillSample(prompt, shape, word, color, fill, artist, first_seed + len(out), group, fw))

    n = 0  # rotates templates, fills and colours across the grid
    for group in groups:
        for shape in shapes:
            if group == "name":
                for color in colors:
                    for fill in fills:
                        n += 1
                        add(caption(shape, color, fill, n), shape, shape, color, fill, group, False, fill)
                        add(caption(shape, color, fill, n, True), shape, shape, color, fill, group, True, None)
            elif group in ("synonym", "heldout_word"):
                words = SYNONYMS[shape] if group == "synonym" else HELDOUT_WORDS[shape]
                for word in words:
                    for color in colors:
                        n += 1
                        fill = fills[n % len(fills)]
                        add(caption(word, color, fill, n), shape, word, color, fill, group, False, fill)
            elif group == "heldout_fill":
                for fill in fills:
                    for fw in HELDOUT_FILL_WORDS[fill]:
                        n += 1
                        color = colors[n % len(colors)]
                        template = HELDOUT_TEMPLATES[n % len(HELDOUT_TEMPLATES)]
                        prompt = template.format(shape=shape, color=color, fill=fw)
                        add(prompt, shape, shape, color, fill, group, False, fw)
            elif group == "heldout_template":
                templates = [(t, False) for t in HELDOUT_TEMPLATES] + [(t, True) for t in HELDOUT_ARTIST_TEMPLATES]
                for template, by_artist in templates:
                    for color in colors:
                        n += 1
                        fill = fills[n % len(fills)]
                        prompt = template.format(shape=shape, color=color, fill=fill, artist=ARTIST_OF[fill])
                        add(prompt, shape, shape, color, fill, group, by_artist, None if by_artist else fill)
            else:
                raise ValueError(f"unknown sample group {group!r}; expected one of {GROUPS}")
    return out


@dataclass
class FillsReport:
    """Judged rates; each is the fraction of the relevant samples judged as asked.

    shape_accuracy / color_accuracy: "name" samples, by shape / colour. fill_accuracy: "name" samples that name the
    fill by its word, by fill; artist_accuracy: "name" samples that name it by artist, by artist. word_rate: shape
    hit rate by shape word (names, synonyms, held-out words); fill_word_rate: fill hit rate by fill word (training
    and held-out words); group_rate: group -> factor -> rate. judged_as: shape -> judged class -> fraction ("name").
    """

    shape_accuracy: dict[str, float]
    color_accuracy: dict[str, float]
    fill_accuracy: dict[str, float]
    artist_accuracy: dict[str, float]
    word_rate: dict[str, float]
    fill_word_rate: dict[str, float]
    group_rate: dict[str, dict[str, float]]
    judged_as: dict[str, dict[str, float]]
    records: list[tuple[FillSample, str, str, str]] = field(default_factory=list, repr=False)

    @staticmethod
    def _mean(rates: dict[str, float]) -> float:
        return sum(rates.values()) / len(rates) if rates else float("nan")

    @property
    def mean_shape_accuracy(self) -> float:
        return self._mean(self.shape_accuracy)

    @property
    def mean_color_accuracy(self) -> float:
        return self._mean(self.color_accuracy)

    @property
    def mean_fill_accuracy(self) -> float:
        return self._mean(self.fill_accuracy)

    @property
    def mean_artist_accuracy(self) -> float:
        return self._mean(self.artist_accuracy)

    def rate_of(self, words: Sequence[str]) -> float:
        """Mean shape hit rate over shape words."""
        return sum(self.word_rate[w] for w in words) / len(words)

    def summary(self) -> dict[str, object]:
        """The figures a report prints: per-factor rates and the means."""
        return {
            "shape": self.shape_accuracy,
            "color": self.color_accuracy,
            "fill": self.fill_accuracy,
            "artist": self.artist_accuracy,
            "words": self.word_rate,
            "fill_words": self.fill_word_rate,
            "groups": self.group_rate,
        }


def _rates(hits: dict[str, list[bool]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in hits.items()}


def judge_fills_samples(
    generate: Generate, samples: Sequence[FillSample], judge: FillsJudge | None = None
) -> FillsReport:
    """Generates every sample, judges it, and aggregates the rates."""
    judge = judge or load_fills_judge()
    images = generate([s.prompt for s in samples], [s.seed for s in samples])
    verdict = judge_fills(images, judge)
    shape_hits: dict[str, list[bool]] = defaultdict(list)
    color_hits: dict[str, list[bool]] = defaultdict(list)
    fill_hits: dict[str, list[bool]] = defaultdict(list)
    artist_hits: dict[str, list[bool]] = defaultdict(list)
    word_hits: dict[str, list[bool]] = defaultdict(list)
    fill_word_hits: dict[str, list[bool]] = defaultdict(list)
    group_hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    judged: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    records = []
    for sample, s_idx, c_idx, f_idx in zip(
        samples, verdict.shapes.tolist(), verdict.colors.tolist(), verdict.fills.tolist(), strict=True
    ):
        shape, color, fill = SHAPE_CLASSES[s_idx], COLOR_NAMES[c_idx], FILLS[f_idx]
        records.append((sample, shape, color, fill))
        ok_shape, ok_color, ok_fill = shape == sample.shape, color == sample.color, fill == sample.fill
        word_hits[sample.word].append(ok_shape)
        if sample.fill_word is not None:
            fill_word_hits[sample.fill_word].append(ok_fill)
        for factor, ok in (("shape", ok_shape), ("color", ok_color), ("fill", ok_fill)):
            group_hits[sample.group][factor].append(ok)
        if sample.group != "name":
            continue
        shape_hits[sample.shape].append(ok_shape)
        color_hits[sample.color].append(ok_color)
        judged[sample.shape][shape] += 1
        if sample.artist is None:
            fill_hits[sample.fill].append(ok_fill)
        else:
            artist_hits[sample.artist].append(ok_fill)
    judged_as = {s: {k: v / sum(c.values()) for k, v in c.items()} for s, c in judged.items()}
    return FillsReport(
        shape_accuracy=_rates(shape_hits),
        color_accuracy=_rates(color_hits),
        fill_accuracy=_rates(fill_hits),
        artist_accuracy=_rates(artist_hits),
        word_rate=_rates(word_hits),
        fill_word_rate=_rates(fill_word_hits),
        group_rate={g: _rates(h) for g, h in group_hits.items()},
        judged_as=judged_as,
        records=records,
    )


def fills_erasure_samples(
    targets: Sequence[str] = (), seeds_per_prompt: int = 1, first_seed: int = 1000
) -> list[FillSample]:
    """Samples for an erasure check on the fills world.

    Every training and held-out word of the target shapes, plus the names of all shapes in every colour and fill
    (by fill word and by artist), so one report shows the erased concept, its paraphrases, and what must survive.
    Target shapes may be empty (a colour, fill or artist erasure reads the "name" group's colour/fill/artist rates).
    """
    samples = build_fills_samples(groups=("name",), seeds_per_prompt=seeds_per_prompt, first_seed=first_seed)
    if targets:
        samples += build_fills_samples(
            shapes=targets,
            groups=("synonym", "heldout_word"),
            seeds_per_prompt=seeds_per_prompt,
            first_seed=first_seed + 50_000,
        )
    return samples
