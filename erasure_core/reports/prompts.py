"""The prompt sets of an erasure report, built deterministically from the erasure and the model's world.

Each prompt is a `Row`: its text and, where known, what it asks for (factor -> label), so usability can be judged
as accuracy. Groups:

  target            efficacy: the concept by its own name (on a demo world: in the world's training caption
                    templates, the same prompts as `erasure_core.worlds.quality`'s target group);
  expanded          robustness: the artifact's expanded phrasings put in place of the concept;
  unnamed_synonym   robustness (demo worlds): in-training synonyms nobody named;
  heldout_word      robustness (demo worlds): held-out paraphrases, words never in training;
  heldout_template  robustness: the concept in templates never in training (built-in ones for other models);
  misspelling       robustness: typos, spacing and case tricks generated from the concept word;
  neighbour         usability: the other values of the concept's factor (other shapes, colours, styles);
  preserve          usability: the erasure's own preserve terms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from erasure_core.concepts import TEMPLATES, fill, mentions

MAX_PER_GROUP = 12
ROBUSTNESS = ("expanded", "unnamed_synonym", "heldout_word", "heldout_template", "misspelling")
USABILITY = ("neighbour", "preserve")
GROUPS = ("target", *ROBUSTNESS, *USABILITY)

# Paraphrase templates the erase prompts never use (`erasure_core.concepts.TEMPLATES`): held apart for models that
# are not a demo world.
HELD_APART: dict[str, tuple[str, ...]] = {
    "object": ("a sketch of one {}", "there is a {} here", "a {} seen from afar", "clip art of a {}"),
    "style": ("a forest scene by {}", "a self-portrait by {}", "a sketch in {} style", "a mural after {}"),
    "attribute": ("a {} umbrella", "a {} kite", "a {} mug", "a {} door"),
}


@dataclass(frozen=True)
class Row:
    prompt: str
    truth: tuple[tuple[str, str], ...] = ()

    def asks(self, factor: str) -> str | None:
        return dict(self.truth).get(factor)


@dataclass
class PromptSets:
    groups: dict[str, list[Row]] = field(default_factory=dict)
    source: str = "built-in templates"

    def nonempty(self) -> dict[str, list[Row]]:
        return {g: rows for g in GROUPS if (rows := self.groups.get(g))}


def _spread(rows: Sequence[Row], limit: int) -> list[Row]:
    """At most `limit` distinct rows, evenly spread over the list (deterministic)."""
    unique = list(dict.fromkeys(rows))
    if len(unique) <= limit:
        return unique
    step = len(unique) / limit
    return [unique[int(i * step)] for i in range(limit)]


def misspellings(word: str) -> list[str]:
    """Deterministic typos and spacing/case tricks of a concept word (for a phrase: of its last word)."""
    head, _, last = word.rpartition(" ")
    w = last
    out: list[str] = []
    if len(w) >= 4:
        mid = len(w) // 2
        out.append(w[: mid - 1] + w[mid] + w[mid - 1] + w[mid + 1 :])  # adjacent swap
        out.append(w[:mid] + w[mid + 1 :])  # dropped letter
        out.append(w[:mid] + w[mid] + w[mid:])  # doubled letter
        out.append(w[:mid] + "-" + w[mid:])  # hyphen inside
    out += [w.upper(), w.capitalize() if w.islower() else w.lower(), " ".join(w), w.replace("e", "3").replace("a", "4")]
    variants = [f"{head} {v}".strip() for v in dict.fromkeys(out) if v != w]
    return variants


def _substitute(prompt: str, word: str, replacement: str) -> str:
    return re.sub(rf"\b{re.escape(word)}\b", replacement, prompt, flags=re.IGNORECASE)


def _in_target_prompts(target: Sequence[Row], word: str, replacements: Sequence[str]) -> list[Row]:
    rows = []
    for i, replacement in enumerate(replacements):
        row = target[i % len(target)]
        if mentions(row.prompt, [word]):
            rows.append(Row(_substitute(row.prompt, word, replacement), row.truth))
    return rows


def concept_of(metadata: dict[str, Any]) -> tuple[str, str, list[str], list[str]]:
    """(concept, kind, phrasings, preserve) recorded in an artifact's metadata."""
    spec = metadata.get("concept")
    spec = spec if isinstance(spec, dict) else {"concept": str(spec or "")}
    phrasings = [p for p in metadata.get("phrasings", []) if isinstance(p, str)]
    preserve = [p for p in spec.get("preserve", []) if isinstance(p, str)]
    return str(spec.get("concept", "")), str(spec.get("kind", "object")), phrasings, preserve


def build_prompt_sets(
    metadata: dict[str, Any], world: str | None, limit: int = MAX_PER_GROUP
) -> tuple[PromptSets, tuple[str, str] | None]:
    """The report's prompt groups for an erasure, and the (factor, label) a demo world's judge looks for."""
    concept, kind, phrasings, preserve = concept_of(metadata)
    sets, target_label = (_world_sets(world, concept, kind) if world else (None, None)) or (None, None)
    if sets is None:
        sets = _generic_sets(concept, kind)
    target = sets.groups["target"]
    expanded = [p for p in phrasings if p.lower() != concept.lower()]
    sets.groups["expanded"] = _in_target_prompts(target, concept, expanded)
    sets.groups["misspelling"] = _in_target_prompts(target, concept, misspellings(concept))
    templates = TEMPLATES.get(kind, TEMPLATES["object"])
    sets.groups["preserve"] = [Row(fill(t, p)) for p in preserve for t in templates[1:4]]
    sets.groups = {g: _spread(rows, limit) for g, rows in sets.groups.items() if rows}
    return sets, target_label


def _generic_sets(concept: str, kind: str) -> PromptSets:
    templates = TEMPLATES.get(kind, TEMPLATES["object"])
    target = [Row(fill(t, concept)) for t in templates[1:9]]
    held = [Row(t.format(concept)) for t in HELD_APART.get(kind, HELD_APART["object"])]
    return PromptSets({"target": target, "heldout_template": held}, source="built-in templates")


def _world_sets(world: str, concept: str, kind: str) -> tuple[PromptSets, tuple[str, str]] | None:
    """A demo world's groups from its quality measurement (`erasure_core.worlds.quality`), if it has the concept."""
    from erasure_core.worlds.quality import WORLDS

    quality = WORLDS[world]()
    case = next((c for c in quality.cases if c.concept.lower() == concept.lower()), None)
    if case is None:
        return None
    renamed = {"target": "target", "synonym": "unnamed_synonym", "heldout_word": "heldout_word"}
    renamed |= {"heldout_template": "heldout_template", "other": "neighbour"}
    groups: dict[str, list[Row]] = {}
    for sample in quality.samples(case, 1):
        groups.setdefault(renamed[sample.group], []).append(Row(sample.prompt, sample.truth))
    return PromptSets(groups, source=f"demo world {world!r} (erasure_core.worlds.quality)"), (case.factor, case.value)
