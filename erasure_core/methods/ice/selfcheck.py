"""ICE's self-check: how much of the concept an edit leaves and what it moves, measured on the model itself.

A closed-form edit of the text-input layers is the same as editing the encoded prompt before the transformer reads
it (the layers are linear and read the text raw: W (I - V M V^T) x = W x' with x' = x - (x V) M V^T), so the edited
model's velocities come from the base transformer on edited conditioning, with no hook and no attached state.

At fixed noisy latents (two noise levels of the sampler's range), with c the mean base velocity of everything that
is not the concept (the kept prompts and everyday words: what "something else" looks like to this model):
  survival(p) = cos(v'(p) - c, v(p) - c)       for the concept's probe prompts p, per noise level: 1 = the edit
                                               changed nothing, <= 0 = the prompt no longer moves the model the
                                               concept's way; an edit's survival is the mean over p at the level
                                               where it is highest;
  drift(q)    = ||v'(q) - v(q)|| / mean_p ||v'(p) - v(p)||   for prompts q that must be kept (the neighbours the
                                               model reads near the concept but draws differently, and a sample of
                                               the preserve corpus): how far they moved, relative to the concept.
Centring on the kept prompts matters where the model draws the concept for content-free prompts (the shapes demo
world draws circles for "a thing" and "a dog"): centred on those alone, an edit that lands on such a prompt would
look like success while the judge still sees circles. The worst level, not the mean of both, because an edit can
turn the concept away where the sample is still noise and leave it where the shape forms: on the shapes demo world
a diamond erasure at eta 2 / preserve 64 measured -0.22 averaged over both levels (settled: the ladder stopped
there) but +0.18 at the lower level, and the judge still saw diamonds in 12% of its samples; by the worst level the
ladder went on to preserve 16, which left 4% (`bench/preservation.py`, 24 samples of the target, 36 per other shape;
no other concept's choice changed on either demo world).
v is the base model, v' the edited one. Neither uses a judge, a world's word lists or labels: a real deployment has
none. The figures go into the artifact's stats (and so the API record).

How they choose the strength (`choose`): for an object erased without an anchor, ICE solves the edit at the
settings of its ladder, gentlest first, and keeps the first whose survival is at most `SETTLED` (-0.1: the
concept's prompts now move the model away from the concept; the ladder stops there), else the gentlest within
`SURVIVAL_SLACK` of the lowest survival any setting reached. Relative to the best, not one fixed bar, because the
floor differs per concept (measured on the demo worlds, 36 judged samples per shape: a star reaches -0.04 at eta 1
and rises to 0.18 at eta 4, where the push overshoots into the other shapes and costs them 31 points; a hexagon
falls from 0.48 at eta 1, where a quarter of its samples stay hexagons, to 0.30 at eta 2, where none do, and only to
0.23 at eta 4). "Nearly as gone as it gets, at the least strength" is the constrained choice the measurements
support. Read step by step as well: once survival is below `REMOVED` (0.5), a setting is also kept when the next
stronger one would lower survival by less than `SURVIVAL_SLACK`. A crescent on the fills world falls 0.85, 0.45, 0.35,
0.26 along the ladder; by the best alone it was erased at eta 2 / preserve 64, where its samples were 0% crescents
and a heart lost 22 points; at eta 1 it is 0% as well and the heart loses 5.5 (`bench/ladder.py`, 36 samples per
other shape). No other concept's choice changed on either demo world. The margin is thin (0.094 against 0.1); the
`REMOVED` guard keeps a concept whose survival is still high from stopping on an early flat step. Drift rose with
strength on both worlds, but its scale differed per concept (a crescent's 0.74 cost a heart 22 points, an arrow's
0.31 cost a hexagon 14), so it is recorded for each setting, not used as a bar.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from erasure_core.expansion import PROBE_SIGMAS, REFERENCE_WORDS, probe_response, probe_velocities
from erasure_core.methods.base import MethodContext
from erasure_core.methods.common import velocity_memo

logger = logging.getLogger(__name__)

Maps = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Check:
    """What an edit achieved: mean and worst survival of the concept, mean and worst drift of what is kept."""

    survival: float
    survival_max: float
    drift: float
    drift_max: float

    def stats(self) -> dict[str, Any]:
        return {
            "survival": round(self.survival, 3),
            "survival_max": round(self.survival_max, 3),
            "drift": round(self.drift, 3),
            "drift_max": round(self.drift_max, 3),
        }


@dataclass
class Probe:
    """The probe prompts of one erasure, encoded once, and the base model's velocities on them."""

    erase: list[str]
    keep: list[str]
    cond: Any
    base: torch.Tensor  # [prompts, features]
    centre: torch.Tensor  # [features]


def probe(ctx: MethodContext, erase: Sequence[str], keep: Sequence[str]) -> Probe | None:
    """Encodes the probe prompts and runs the base model on them and on the everyday reference words (whose
    velocities the model's memo already holds after its first erasure); None when the family cannot run its
    transformer on its own (no training ops)."""
    if ctx.family.training is None:
        return None
    prompts = [*erase, *keep]
    cond = ctx.family.training.encode_text(ctx.pipe, prompts)
    if not all(hasattr(cond, s.name) for s in ctx.family.text_spaces):
        return None
    v = probe_response(ctx.pipe, ctx.family, cond)
    reference = probe_velocities(ctx.pipe, ctx.family, [f"a {w}" for w in REFERENCE_WORDS], velocity_memo(ctx))
    centre = torch.cat([v[len(erase) :], reference]).mean(0)
    return Probe(list(erase), list(keep), cond, v, centre)


def _edited(cond: Any, maps: Maps) -> Any:
    """The conditioning as the edited layers read it: x - (x V) M V^T in every edited text space."""
    changes = {}
    for space, (v, m) in maps.items():
        x = getattr(cond, space)
        vv, mm = v.to(x), m.to(x)
        changes[space] = x - (x @ vv) @ mm @ vv.T
    return dataclasses.replace(cond, **changes)


def measure(ctx: MethodContext, p: Probe, maps: Maps) -> Check:
    """Survival of the concept's probe prompts and drift of the kept ones under the edit `maps` (the reference words
    only centre the comparison: their edited velocities are not needed)."""
    n_e, n_k = len(p.erase), len(p.keep)
    after = probe_response(ctx.pipe, ctx.family, _edited(p.cond, maps))
    base_e, after_e = p.base[:n_e], after[:n_e]
    # Per noise level: the concept counts as gone only when it is gone at every level (see the module docstring).
    levels = [
        F.cosine_similarity(a - c, b - c, dim=1)
        for a, b, c in zip(
            after_e.chunk(len(PROBE_SIGMAS), dim=1),
            base_e.chunk(len(PROBE_SIGMAS), dim=1),
            p.centre.chunk(len(PROBE_SIGMAS)),
            strict=True,
        )
    ]
    survival = torch.stack(levels)  # [levels, prompts]
    moved = (after_e - base_e).norm(dim=1).mean().clamp_min(1e-6)
    drift = (after[n_e : n_e + n_k] - p.base[n_e : n_e + n_k]).norm(dim=1) / moved
    return Check(
        float(survival.mean(1).max()),
        float(survival.max()),
        float(drift.mean()) if n_k else 0.0,
        float(drift.max()) if n_k else 0.0,
    )


SURVIVAL_SLACK = 0.1
# Survival at or below which a setting is kept without trying stronger ones. Not 0: the shapes world's prior shape
# (the circle, which it draws for content-free prompts, so the centre c leans circle) measured -0.01 at a setting that
# left 38% of its samples circles.
SETTLED = -0.1


def settled(check: Check | None) -> bool:
    """Whether a setting's edit turned the concept's prompts away from the concept (survival at most `SETTLED`): the
    gentlest such setting is kept and the ladder stops there."""
    return check is not None and check.survival <= SETTLED


# Below this survival (a cosine) the concept's prompts no longer point the model mainly the concept's way; from there
# a stronger setting is taken only when it buys at least `SURVIVAL_SLACK` more (`plateaued`).
REMOVED = 0.5


def plateaued(check: Check, stronger: Check | None) -> bool:
    """Whether the next stronger setting would lower an already mostly removed concept's survival by less than
    `SURVIVAL_SLACK`: not worth its cost to everything else (see the module docstring)."""
    return stronger is not None and check.survival < REMOVED and check.survival - stronger.survival < SURVIVAL_SLACK


def choose(checks: Sequence[Check]) -> int:
    """The index of the setting to keep among `checks` (ordered gentlest first): the first that `settled`, is within
    `SURVIVAL_SLACK` of the lowest survival, or `plateaued` (see the module docstring)."""
    best = min(c.survival for c in checks)
    stronger = [*checks[1:], None]
    return next(
        i
        for i, c in enumerate(checks)
        if settled(c) or c.survival <= best + SURVIVAL_SLACK or plateaued(c, stronger[i])
    )


MAX_PROBES = 12  # per side: enough to see the concept and its neighbours, cheap enough for an instant erasure


def probe_prompts(
    spec: Any, phrasings: Sequence[str], neighbours: Sequence[str], corpus: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The concept's probe prompts (each phrasing in two of its kind's templates; for an erasure of several
    concepts, an even sample of the concepts) and the prompts to keep (each neighbour, then an even sample of the
    preserve corpus minus anything naming the concept)."""
    from erasure_core.concepts import TEMPLATES, fill, mentions

    templates = TEMPLATES[spec.kind][1:3]
    if len(spec.concepts) > 1:  # one erasure of many: probe an even sample of its concepts, not the first one's words
        picked = spec.concepts[:: max(1, len(spec.concepts) // MAX_PROBES)][:MAX_PROBES]
        erase = [fill(t, c) for t in templates for c in picked][:MAX_PROBES]
    else:
        erase = [fill(t, p) for p in phrasings for t in templates][:MAX_PROBES]
    keep = [fill(templates[0], n) for n in neighbours]
    others = [c for c in corpus if c and not mentions(c, list(phrasings))]
    room = max(0, MAX_PROBES - len(keep))
    if others and room:
        step = max(1, len(others) // room)
        keep += others[::step][:room]
    return erase, keep
