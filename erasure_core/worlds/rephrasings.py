"""Rephrasings of every demo-world shape that no test tunes on: ground truth for measuring how far an erasure reaches.

For each shape of both demo worlds (shapes: circle square triangle cross diamond; fills: star heart hexagon crescent
arrow) a fixed set of at least 25 prompt-ready phrasings, grouped by kind:

  case         UPPER, Title and mIxEd case;
  spacing      split inside the word, letters spaced, hyphenated;
  plural       plurals and counted forms;
  misspelling  adjacent swap, dropped letter, doubled letter, wrong vowel;
  translation  six languages, written by hand per shape;
  description  plain-English descriptions, written by hand per shape.

None is the concept word itself, a world's named synonym (`SYNONYMS`) or held-out word (`HELDOUT_WORDS`).
`prompt` turns one into a full prompt ("a {}" unless it already starts with an article or a count).

Like the judges and held-out lists, this is ground truth for tests and benches only: erasure code never reads it.
"""

from __future__ import annotations

KINDS: tuple[str, ...] = ("case", "spacing", "plural", "misspelling", "translation", "description")
VOWELS = "aeiou"
# First words after which a rephrasing is used as it is (English and the translations' articles, counts).
DETERMINERS = frozenset("a an the one two three four some many several un une una uno um uma ein eine een".split())


def case_forms(word: str) -> tuple[str, ...]:
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(word))
    return (word.upper(), word.title(), mixed)


def spacing_forms(word: str) -> tuple[str, ...]:
    half = len(word) // 2
    return (f"{word[:half]} {word[half:]}", " ".join(word), f"{word[:half]}-{word[half:]}")


def plural_of(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def plural_forms(word: str) -> tuple[str, ...]:
    many = plural_of(word)
    return (f"some {many}", f"two {many}", f"three {many}", f"several {many}")


def misspelling_forms(word: str) -> tuple[str, ...]:
    swap = word[0] + word[2] + word[1] + word[3:]  # adjacent swap
    late = word[:-3] + word[-2] + word[-3] + word[-1]  # adjacent swap near the end
    dropped = word[:-2] + word[-1]  # dropped letter
    doubled = word[:2] + word[2] + word[2:]  # doubled letter
    i = next(i for i, c in enumerate(word) if c in VOWELS)
    other = VOWELS[(VOWELS.index(word[i]) + 1) % len(VOWELS)]
    vowel = word[:i] + other + word[i + 1 :]  # wrong vowel
    out: list[str] = []
    for form in (swap, late, dropped, doubled, vowel):
        if form != word and form not in out:
            out.append(form)
    return tuple(out)


# Hand-written: Spanish, French, German, Italian, Portuguese, Dutch (with their articles).
TRANSLATIONS: dict[str, tuple[str, ...]] = {
    "circle": ("un círculo", "un cercle", "ein Kreis", "un cerchio", "uma circunferência", "een cirkel"),
    "square": ("un cuadrado", "un carré", "ein Quadrat", "un quadrato", "um quadrado", "een vierkant"),
    "triangle": ("un triángulo", "un triangle", "ein Dreieck", "un triangolo", "um triângulo", "een driehoek"),
    "cross": ("una cruz", "une croix", "ein Kreuz", "una croce", "uma cruzeta", "een kruis"),
    "diamond": ("un rombo de naipe", "un carreau", "eine Raute", "un rombo", "um losango", "een ruit"),
    "star": ("una estrella", "une étoile", "ein Stern", "una stella", "uma estrela", "een ster"),
    "heart": ("un corazón", "un cœur", "ein Herz", "un cuore", "um coração", "een hart"),
    "hexagon": ("un hexágono", "un hexagone", "ein Sechseck", "un esagono", "um hexágono regular", "een zeshoek"),
    "crescent": (
        "una media luna",
        "un croissant de lune",
        "eine Mondsichel",
        "una mezzaluna",
        "um crescente",
        "een halve maan",
    ),
    "arrow": ("una flecha", "une flèche", "ein Pfeil", "una freccia", "uma seta", "een pijl"),
}

# Hand-written plain-English descriptions that avoid the shape's name, synonyms and held-out words.
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "circle": (
        "a perfectly round shape",
        "a round flat figure with no corners",
        "a curve whose every point is the same distance from the centre",
        "a closed round outline",
        "a shape like the full face of a clock",
    ),
    "square": (
        "a four-sided shape with equal sides",
        "a shape with four equal sides and four right angles",
        "a regular quadrilateral",
        "a shape with four corners, all right angles",
        "an equal-sided box-like figure with straight edges",
    ),
    "triangle": (
        "a three-sided shape",
        "a shape with three corners",
        "a polygon with three straight sides",
        "a figure made of three straight lines",
        "a shape with three points",
    ),
    "cross": (
        "two bars crossing at right angles",
        "a shape of one upright and one horizontal bar crossing in the middle",
        "the symbol made by two crossing lines",
        "a shape like the letter t with equal arms",
        "four equal arms meeting at a centre",
    ),
    "diamond": (
        "a square turned on its corner",
        "a four-sided shape standing on one point",
        "a tilted square with points at top and bottom",
        "the shape on a red playing-card suit with four points",
        "a four-pointed shape with slanted sides",
    ),
    "star": (
        "a shape with five points",
        "a shape with pointed rays around a centre",
        "the pointed shape children draw for the night sky",
        "a figure with five spikes",
        "a shape with points radiating outwards",
    ),
    "heart": (
        "the shape of love",
        "a shape with two rounded lobes on top and a point at the bottom",
        "the symbol on a valentine card",
        "a symbol of affection",
        "the shape from the playing-card suit of love",
    ),
    "hexagon": (
        "a six-sided shape",
        "a polygon with six sides",
        "a shape with six corners",
        "the shape of a cell in a bee comb",
        "a figure with six equal straight edges",
    ),
    "crescent": (
        "the shape of a thin sliver of moon",
        "a curved shape like a new moon",
        "a shape like a fingernail clipping",
        "a curved horn-like shape narrowing to two points",
        "the shape of the moon a few days after new moon",
    ),
    "arrow": (
        "a shape that points in a direction",
        "a shaft with a pointed head",
        "a line with a triangular tip at one end",
        "a sign that shows the way to go",
        "the thing shot from a bow",
    ),
}


def _build(shape: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    parts = (
        ("case", case_forms(shape)),
        ("spacing", spacing_forms(shape)),
        ("plural", plural_forms(shape)),
        ("misspelling", misspelling_forms(shape)),
        ("translation", TRANSLATIONS[shape]),
        ("description", DESCRIPTIONS[shape]),
    )
    seen: set[str] = set()
    for kind, texts in parts:
        for text in texts:
            if text not in seen:
                seen.add(text)
                out.append((kind, text))
    return tuple(out)


WORLD_SHAPES: dict[str, tuple[str, ...]] = {
    "shapes": ("circle", "square", "triangle", "cross", "diamond"),
    "fills": ("star", "heart", "hexagon", "crescent", "arrow"),
}
REPHRASINGS: dict[str, tuple[tuple[str, str], ...]] = {
    shape: _build(shape) for shapes in WORLD_SHAPES.values() for shape in shapes
}


def prompt(text: str) -> str:
    """The prompt a rephrasing is generated with: as it is when it starts with an article or count, else "a {}"."""
    first = text.split()[0].lower()
    return text if first in DETERMINERS else f"a {text}"
