"""Concept specs and the prompt sets built from them (erase, anchor and preserve prompts)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from erasure_core.errors import InvalidConfigError

ConceptKind = Literal["object", "style", "attribute"]
MAX_PHRASE_CHARS = 200
MAX_LIST = 64
MAX_CONCEPTS = 100  # concepts one erasure may remove together: `concept` plus up to 99 in `also`
# Erase prompts per erasure: with many phrasings each gets fewer templates (never fewer than MIN_TEMPLATES), so
# erasing 100 concepts costs about as much text encoding as erasing one with its mined phrasings.
ERASE_PROMPT_BUDGET = 480
MIN_TEMPLATES = 4

# Contexts a concept is placed in to sample its embeddings. "{}" is the concept (or its anchor).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": (
        "{}",
        "a {}",
        "a photo of a {}",
        "a picture of a {}",
        "an image of a {}",
        "a drawing of a {}",
        "a painting of a {}",
        "a close-up of a {}",
        "one {}",
        "a small {}",
        "a large {}",
        "a simple {} icon",
        "a red {}",
        "a green {}",
        "a blue {}",
        "a yellow {}",
        "a purple {}",
        "an orange {}",
        "a black {}",
        "a white {}",
        "a {} on a table",
        "a {} in the street",
        "an image showing a {}",
        "a {}, high quality",
    ),
    "style": (
        "{}",
        "art by {}",
        "a painting by {}",
        "in the style of {}",
        "a landscape in the style of {}",
        "a portrait in the style of {}",
        "a city painted by {}",
        "a still life by {}",
        "{} style artwork",
        "a drawing in the manner of {}",
        "an illustration by {}",
        "a poster by {}",
    ),
    "attribute": (
        "{}",
        "a {} thing",
        "a {} object",
        "a {} shape",
        "something {}",
        "a {} picture",
        "a {} car",
        "a {} ball",
        "a {} box",
        "a {} flower",
        "a {} house",
        "a {} shirt",
        "a {} circle",
        "a {} square",
        "a {} triangle",
        "a {} star",
        "a picture of a {} shape",
        "an image of a {} object",
        "one {} item",
        "a {} icon",
    ),
}

# Everyday prompts that every erasure must leave alone (the built-in preserve corpus).
EVERYDAY_PROMPTS: tuple[str, ...] = (
    "a photo of a dog",
    "a cat sleeping on a sofa",
    "a city street at night",
    "a bowl of fruit on a table",
    "a mountain landscape at sunrise",
    "a portrait of an old man",
    "a red sports car",
    "a cup of coffee",
    "a group of people at a party",
    "a beach with palm trees",
    "a bird on a branch",
    "a modern kitchen",
    "a child playing football",
    "a bicycle leaning on a wall",
    "a plate of pasta",
    "a forest in autumn",
    "a woman reading a book",
    "a sailing boat on the sea",
    "a snowy village",
    "a vase of flowers",
    "a busy market",
    "a horse in a field",
    "an astronaut in space",
    "a wooden chair",
    "a glass of water",
    "a rainy window",
    "a lighthouse on a cliff",
    "a laptop on a desk",
    "a bridge over a river",
    "a pair of shoes",
    "a blue sky with clouds",
    "a train station",
    "a birthday cake",
    "a green apple",
    "a black and white photo",
    "a painting of a lake",
    "a watercolor of a house",
    "an oil painting of a ship",
    "a sketch of a face",
    "a cartoon character",
    "a logo design",
    "a simple geometric pattern",
    "a yellow taxi",
    "a white wall",
    "a colorful abstract image",
    "a small toy",
    "a large building",
    "an empty room",
    "a picture",
    "an image",
    "a photo",
    "a drawing",
    "",
)


class ConceptSpec(BaseModel):
    """What to erase: the concept, how to phrase it, what it becomes, and what must not change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concept: str = Field(min_length=1, max_length=MAX_PHRASE_CHARS)
    also: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_CONCEPTS - 1,
        description="Further concepts of the same kind removed by the same erasure (not expanded).",
    )
    kind: ConceptKind = "object"
    synonyms: tuple[str, ...] = Field(default=(), max_length=MAX_LIST)
    preserve: tuple[str, ...] = Field(default=(), max_length=MAX_LIST)
    anchor: str | None = Field(default=None, max_length=MAX_PHRASE_CHARS)
    expand: bool = False

    @field_validator("concept", "anchor")
    @classmethod
    def _clean_phrase(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if not value:
            raise ValueError("must contain a non-space character")
        return value

    @model_validator(mode="after")
    def _anchor_is_elsewhere(self) -> ConceptSpec:
        """Mapping a concept onto itself erases nothing (and leaves ICE nothing to solve for)."""
        if self.anchor is not None:
            own = {p.casefold() for p in (*self.concepts, *self.synonyms)}
            if self.anchor.casefold() in own:
                raise ValueError(f"anchor {self.anchor!r} is the concept itself (or one of its synonyms or `also`)")
        return self

    @property
    def concepts(self) -> tuple[str, ...]:
        """Every concept this erasure removes: `concept` first, then `also`."""
        return (self.concept, *(c for c in self.also if c != self.concept))

    @field_validator("synonyms", "preserve", "also")
    @classmethod
    def _clean_list(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for value in values:
            value = " ".join(str(value).split())
            if not value or len(value) > MAX_PHRASE_CHARS:
                raise ValueError(f"each item must be 1 to {MAX_PHRASE_CHARS} characters")
            if value not in cleaned:
                cleaned.append(value)
        return tuple(cleaned)


def fill(template: str, phrase: str) -> str:
    """Puts a phrase into a template; an empty phrase removes the slot and tidies articles and spaces."""
    text = template.format(phrase)
    if not phrase:
        text = re.sub(r"\b(a|an|one)\s*(?=$|[,.])", "", text)
    return " ".join(text.split()).strip(" ,")


def mentions(prompt: str, phrases: list[str]) -> bool:
    """Whether the prompt contains any of the phrases as whole words (case-insensitive)."""
    lowered = prompt.lower()
    return any(re.search(rf"\b{re.escape(p.lower())}\b", lowered) for p in phrases if p)


# With no anchor, the concept is erased onto a neutral placeholder of the same word count. Deleting the words
# instead would shift every later token (the encoders run without a mask, so even padding states move) and the
# differences would then carry the whole sentence, not the concept.
NEUTRAL: dict[str, str] = {"object": "thing", "style": "art", "attribute": "the"}
# Other generic words for "an object": a model may draw one of them differently from its prior shape, which it may
# draw for "thing" too. The trained methods measure them on the model at hand (`eraseanything.method.measured_anchor`);
# a style's or attribute's neutral word has no generic alternative.
NEUTRAL_ALTERNATES: dict[str, tuple[str, ...]] = {"object": ("object", "item")}


def neutral_anchor(phrase: str, kind: str, word: str | None = None) -> str:
    """The neutral placeholder for a phrase: `word` (default: the kind's neutral word) once per word of the phrase,
    so the anchor prompt lines up with the erase prompt position by position."""
    return " ".join([word or NEUTRAL[kind]] * len(phrase.split()))


def neutral_candidates(kind: str) -> tuple[str, ...]:
    """The neutral words a concept of this kind may be anchored on, the default first."""
    return (NEUTRAL[kind], *NEUTRAL_ALTERNATES.get(kind, ()))


def erase_and_anchor_prompts(phrasings: list[str], kind: str, anchor: str | None) -> tuple[list[str], list[str]]:
    """Position-aligned erase prompts and their anchor counterparts (anchor None: a neutral placeholder)."""
    if kind not in TEMPLATES:
        raise InvalidConfigError(f"unknown concept kind {kind!r}; expected one of {sorted(TEMPLATES)}")
    erase, anchors = [], []
    per_phrase = max(MIN_TEMPLATES, ERASE_PROMPT_BUDGET // max(1, len(phrasings)))
    for template in TEMPLATES[kind][:per_phrase]:
        for phrase in phrasings:
            erase.append(fill(template, phrase))
            anchors.append(fill(template, anchor if anchor is not None else neutral_anchor(phrase, kind)))
    return erase, anchors


def preserve_prompts(spec: ConceptSpec, phrasings: list[str], corpus: list[str]) -> list[str]:
    """The caller's preserve terms in the concept's templates, plus the corpus, minus anything naming the concept."""
    prompts = [fill(t, p) for p in spec.preserve for t in TEMPLATES[spec.kind]]
    prompts += list(corpus)
    blocked = phrasings + ([] if spec.anchor is None else [])
    unique = dict.fromkeys(p for p in prompts if not mentions(p, blocked))
    return list(unique)


def protected_words(spec: ConceptSpec, corpus: list[str]) -> set[str]:
    """Words the preserve set uses outside the concept's own prompts: expansion never adds them as phrasings."""
    named = [*spec.concepts, *spec.synonyms]
    prompts = [p for p in [*corpus, *spec.preserve] if not mentions(p, named)]
    words = {w for p in prompts for w in re.findall(r"[a-z]+", p.lower())}
    if spec.anchor:
        words |= set(spec.anchor.lower().split())
    return words - {w.lower() for phrase in named for w in phrase.split()}
