"""Model families by name."""

from __future__ import annotations

from erasure_core.errors import InvalidConfigError
from erasure_core.families.base import ModelFamily, TextSpace
from erasure_core.families.flux import FLUX
from erasure_core.families.open_sora import OPEN_SORA

FAMILIES: dict[str, ModelFamily] = {FLUX.name: FLUX, OPEN_SORA.name: OPEN_SORA}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidConfigError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "ModelFamily", "TextSpace", "get_family"]
