"""Rephrasings no test tunes on (`erasure_core.worlds.rephrasings`): the set is well formed. What the default ICE
erasure leaves of them is `bench/rephrasings.py`'s to measure: it does not meet the issue's bar yet (star leaks 23 of
its 25 drawing rephrasings, diamond 9 of 16), so no test asserts it."""

from __future__ import annotations

from erasure_core.worlds import fills, shapes
from erasure_core.worlds.rephrasings import KINDS, REPHRASINGS, WORLD_SHAPES


def test_every_shape_has_a_fixed_set_of_rephrasings() -> None:
    assert WORLD_SHAPES == {"shapes": shapes.SHAPES, "fills": fills.SHAPES}
    for module in (shapes, fills):
        for shape in module.SHAPES:
            entries = REPHRASINGS[shape]
            texts = [text for _, text in entries]
            assert len(set(texts)) == len(texts) >= 25, shape
            assert {kind for kind, _ in entries} == set(KINDS), shape
            assert sum(kind == "translation" for kind, _ in entries) >= 5, shape
            assert sum(kind == "description" for kind, _ in entries) >= 5, shape
            banned = {shape, *module.SYNONYMS[shape], *module.HELDOUT_WORDS[shape]}
            assert not banned & set(texts), shape  # case forms differ from the word only in case
