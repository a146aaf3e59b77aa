"""Erasure quality on the demo worlds, measured the same way on each: what is gone, what leaks, what it cost.

One erasure case = a concept as a caller would name it ("triangle", "red", "Velmora") and what the world's judge
should stop seeing (factor "shape" = "triangle", "color" = "red", "fill" = "striped"). Its samples fall in groups:

  target            the concept by its own name, in training caption templates;
  synonym           in-training synonyms nobody named (words the training captions used for the same thing);
  heldout_word      held-out paraphrases: words never in any training caption;
  heldout_template  the concept by its name in caption templates never in training;
  other             the other values of the same factor (other shapes, colours, styles): what must stay.

Rates are judged: the fraction of a group's samples the judge sees as the concept (for "other": as what each
sample asked for). Every other factor a sample names (a shape's colour, a colour's shape) is judged too, so the
cost to other kinds of concept is measured on the same samples. The same prompts and seeds serve the base model and
every erasure, so differences come from the erasure alone.

Nothing here feeds an erasure: the judges and held-out lists are ground truth for tests and benches only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

Kind = Literal["object", "style", "attribute"]
Generate = Callable[[list[str], list[int]], torch.Tensor]
GROUPS = ("target", "synonym", "heldout_word", "heldout_template", "other")


@dataclass(frozen=True)
class Case:
    """One erasure to measure: what the caller names, its kind, and what the judge should stop seeing."""

    world: str
    concept: str
    kind: Kind
    factor: str
    value: str


@dataclass(frozen=True)
class Sample:
    """One prompt and seed; `truth` holds every factor the prompt asks for (factor -> value)."""

    prompt: str
    seed: int
    group: str
    truth: tuple[tuple[str, str], ...]

    def asks(self, factor: str) -> str | None:
        return dict(self.truth).get(factor)


@dataclass(frozen=True)
class QualityWorld:
    """A demo world as the quality measurement sees it."""

    name: str
    model_source: Callable[[Path | None], str]  # cache dir -> the source `load_engine("flux", ...)` takes
    cases: tuple[Case, ...]
    samples: Callable[[Case, int], list[Sample]]  # (case, seeds per prompt) -> samples
    judge: Callable[[torch.Tensor], dict[str, list[str]]]  # images -> factor -> judged value per image


@dataclass
class CaseResult:
    """Judged rates of one case under one erasure (or none), and the base rates they are compared with."""

    rates: dict[str, float]  # group -> rate of the concept (other: accuracy on what each sample asked)
    other_change: dict[str, float]  # each other value of the factor -> accuracy change in points
    factor_change: dict[str, float]  # each other factor -> accuracy change in points (over all samples)
    seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        worst = min(self.other_change.values(), default=0.0)
        out: dict[str, object] = {g: round(r, 3) for g, r in self.rates.items()}
        out["others_worst_change_pts"] = round(worst, 1)
        out["others_change_pts"] = {k: round(v, 1) for k, v in self.other_change.items()}
        out["other_factors_change_pts"] = {k: round(v, 1) for k, v in self.factor_change.items()}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 2)
        return out | self.extra


def judged(
    world: QualityWorld, generate: Generate, samples: Sequence[Sample], batch: int = 128
) -> list[dict[str, str]]:
    """Generates every sample in bounded batches and returns the judge's verdict per sample (factor -> value)."""
    prompts, seeds = [s.prompt for s in samples], [s.seed for s in samples]
    images = torch.cat([generate(prompts[i : i + batch], seeds[i : i + batch]) for i in range(0, len(prompts), batch)])
    verdict = world.judge(images)
    return [{f: values[i] for f, values in verdict.items()} for i in range(len(samples))]


def _accuracy(samples: Sequence[Sample], verdicts: Sequence[dict[str, str]], factor: str) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, verdict in zip(samples, verdicts, strict=True):
        asked = sample.asks(factor)
        if asked is not None:
            hits[asked].append(verdict[factor] == asked)
    return {value: sum(h) / len(h) for value, h in hits.items()}


def rates(case: Case, samples: Sequence[Sample], verdicts: Sequence[dict[str, str]]) -> dict[str, float]:
    """Per group: the fraction judged as the concept; for "other", the accuracy on what each sample asked."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, verdict in zip(samples, verdicts, strict=True):
        if sample.group == "other":
            hits["other"].append(verdict[case.factor] == sample.asks(case.factor))
        else:
            hits[sample.group].append(verdict[case.factor] == case.value)
    return {g: sum(h) / len(h) for g in GROUPS if (h := hits.get(g))}


def compare(
    case: Case,
    samples: Sequence[Sample],
    base: Sequence[dict[str, str]],
    erased: Sequence[dict[str, str]],
    factors: Sequence[str],
) -> CaseResult:
    """The erased rates, and the accuracy changes (points) of the factor's other values and of the other factors."""
    others = [s for s in samples if s.group == "other"]
    idx = [i for i, s in enumerate(samples) if s.group == "other"]
    before = _accuracy(others, [base[i] for i in idx], case.factor)
    after = _accuracy(others, [erased[i] for i in idx], case.factor)
    other_change = {v: 100 * (after[v] - before[v]) for v in before}
    factor_change = {}
    for factor in factors:
        if factor == case.factor:
            continue
        b, a = _accuracy(samples, base, factor), _accuracy(samples, erased, factor)
        if b:
            factor_change[factor] = 100 * (sum(a.values()) / len(a) - sum(b.values()) / len(b))
    return CaseResult(rates(case, samples, erased), other_change, factor_change)


# -- the two demo worlds -------------------------------------------------------------------------------------------


def _seeded(prompts: Sequence[tuple[str, str, dict[str, str]]], seeds: int, first_seed: int) -> list[Sample]:
    out: list[Sample] = []
    for prompt, group, truth in prompts:
        for _ in range(seeds):
            out.append(Sample(prompt, first_seed + len(out), group, tuple(sorted(truth.items()))))
    return out


def shapes_world() -> QualityWorld:
    """The first demo world: five shapes (objects) in six colours (attributes)."""
    from erasure_core.worlds.judge import SHAPE_CLASSES, judge_images, load_judge
    from erasure_core.worlds.shapes import COLOR_NAMES, HELDOUT_TEMPLATES, HELDOUT_WORDS, SHAPES, SYNONYMS, caption

    judge_model = load_judge()
    colors = ("red", "blue", "green")

    def samples(case: Case, seeds: int) -> list[Sample]:
        rows: list[tuple[str, str, dict[str, str]]] = []
        if case.factor == "shape":
            s = case.value
            for c in colors:
                rows += [(caption(s, c, t), "target", {"shape": s, "color": c}) for t in (0, 2, 4)]
                rows += [(caption(w, c, 1), "synonym", {"shape": s, "color": c}) for w in SYNONYMS[s]]
                rows += [(caption(w, c, 3), "heldout_word", {"shape": s, "color": c}) for w in HELDOUT_WORDS[s]]
                rows += [
                    (t.format(shape=s, color=c), "heldout_template", {"shape": s, "color": c})
                    for t in HELDOUT_TEMPLATES
                ]
                rows += [(caption(o, c, 2), "other", {"shape": o, "color": c}) for o in SHAPES if o != s]
        else:
            c = case.value
            for s in SHAPES:
                rows += [(caption(s, c, t), "target", {"shape": s, "color": c}) for t in (0, 4)]
                rows += [
                    (t.format(shape=s, color=c), "heldout_template", {"shape": s, "color": c})
                    for t in HELDOUT_TEMPLATES[:3]
                ]
                rows += [(caption(s, o, 2), "other", {"shape": s, "color": o}) for o in COLOR_NAMES if o != c]
        return _seeded(rows, seeds, first_seed=20_000)

    def judge(images: torch.Tensor) -> dict[str, list[str]]:
        verdict = judge_images(images, judge_model)
        return {
            "shape": [SHAPE_CLASSES[int(i)] for i in verdict.shapes],
            "color": [COLOR_NAMES[int(i)] for i in verdict.colors],
        }

    cases = tuple(Case("shapes", s, "object", "shape", s) for s in SHAPES) + (
        Case("shapes", "red", "attribute", "color", "red"),
    )
    return QualityWorld("shapes", lambda cache: "demo", cases, samples, judge)


def fills_world() -> QualityWorld:
    """The second demo world: five shapes in five colours and five fills, fills also named by made-up artists.

    It is served as an ordinary folder (no bundled corpus), like a model the project has never seen.
    """
    from erasure_core.worlds import fills as fw
    from erasure_core.worlds.fills_judge import SHAPE_CLASSES, judge_fills, load_fills_judge
    from erasure_core.worlds.fills_world import assemble_fills_world

    judge_model = load_fills_judge()
    colors = fw.COLOR_NAMES[:3]

    def samples(case: Case, seeds: int) -> list[Sample]:
        build = {"shape": _fills_shape_rows, "color": _fills_color_rows, "fill": _fills_style_rows}[case.factor]
        return _seeded(build(case, _Turns(), colors), seeds, first_seed=40_000)

    def judge(images: torch.Tensor) -> dict[str, list[str]]:
        verdict = judge_fills(images, judge_model)
        return {
            "shape": [SHAPE_CLASSES[int(i)] for i in verdict.shapes],
            "color": verdict.color_names(),
            "fill": verdict.fill_names(),
        }

    cases = (
        *(Case("fills", s, "object", "shape", s) for s in fw.SHAPES),
        Case("fills", "pink", "attribute", "color", "pink"),
        Case("fills", "Velmora", "style", "fill", fw.ARTISTS["Velmora"]),
    )
    return QualityWorld("fills", lambda cache: str(assemble_fills_world(cache)), cases, samples, judge)


WORLDS: dict[str, Callable[[], QualityWorld]] = {"shapes": shapes_world, "fills": fills_world}
FACTORS: dict[str, tuple[str, ...]] = {"shapes": ("shape", "color"), "fills": ("shape", "color", "fill")}


class _Turns:
    """A counter that rotates fills, colours and caption templates across a sample grid, so each shows up."""

    def __init__(self) -> None:
        self.n = 0

    def next(self, items: Sequence[str]) -> str:
        self.n += 1
        return items[self.n % len(items)]


Row = tuple[str, str, dict[str, str]]


def _fills_row(prompt: str, group: str, shape: str, color: str, fill: str) -> Row:
    return prompt, group, {"shape": shape, "color": color, "fill": fill}


def _fills_shape_rows(case: Case, turn: _Turns, colors: Sequence[str]) -> list[Row]:
    from erasure_core.worlds import fills as fw

    s, rows = case.value, []
    for c in colors:
        for t in range(3):
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(fw.caption(s, c, f, t), "target", s, c, f))
        for w in (*fw.SYNONYMS[s], *fw.HELDOUT_WORDS[s]):
            f = turn.next(fw.FILLS)
            group = "synonym" if w in fw.SYNONYMS[s] else "heldout_word"
            rows.append(_fills_row(fw.caption(w, c, f, turn.n), group, s, c, f))
        for tpl in fw.HELDOUT_TEMPLATES:
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(tpl.format(shape=s, color=c, fill=f), "heldout_template", s, c, f))
        for o in (o for o in fw.SHAPES if o != s):
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(fw.caption(o, c, f, turn.n), "other", o, c, f))
    return rows


def _fills_color_rows(case: Case, turn: _Turns, colors: Sequence[str]) -> list[Row]:
    from erasure_core.worlds import fills as fw

    c, rows = case.value, []
    for s in fw.SHAPES:
        for _ in range(2):
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(fw.caption(s, c, f, turn.n), "target", s, c, f))
        for tpl in fw.HELDOUT_TEMPLATES[:2]:
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(tpl.format(shape=s, color=c, fill=f), "heldout_template", s, c, f))
        for o in (o for o in fw.COLOR_NAMES if o != c):
            f = turn.next(fw.FILLS)
            rows.append(_fills_row(fw.caption(s, o, f, turn.n), "other", s, o, f))
    return rows


def _fills_style_rows(case: Case, turn: _Turns, colors: Sequence[str]) -> list[Row]:
    """A style: the artist (`case.concept`) names the fill (`case.value`); the fill's own word is its synonym."""
    from erasure_core.worlds import fills as fw

    f, rows = case.value, []
    for s in fw.SHAPES:
        for c in colors:
            turn.n += 1
            rows.append(_fills_row(fw.caption(s, c, f, turn.n, by_artist=True), "target", s, c, f))
            rows.append(_fills_row(fw.caption(s, c, f, turn.n), "synonym", s, c, f))
        for tpl in fw.HELDOUT_ARTIST_TEMPLATES:
            c = turn.next(colors)
            rows.append(_fills_row(tpl.format(shape=s, color=c, artist=case.concept), "heldout_template", s, c, f))
        for o in (o for o in fw.FILLS if o != f):
            c = turn.next(colors)
            rows.append(_fills_row(fw.caption(s, c, o, turn.n, by_artist=True), "other", s, c, o))
    return rows
