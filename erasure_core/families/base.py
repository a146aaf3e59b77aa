"""What a model family declares: its text-conditioning layers, LoRA target sets and how it encodes prompts.

Methods never hard-code a family: they ask the family which layers read which text space and how to encode a
prompt, so adding a family (Open-Sora) is one new file, with no change to any method.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from erasure_core.errors import NoMatchingModuleError


class TextEncoding(Protocol):
    """Encodes prompts as the pipeline feeds them to its transformer: {space name: tensor} (float32, CPU)."""

    def __call__(self, pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]: ...


MaxSequenceLength = Callable[[Any], int]
"""pipe -> the text length the model samples with."""

NativeSize = Callable[[Any], tuple[int, int]]
"""pipe -> the model's native (height, width) in pixels."""


class TrainingOps(Protocol):
    """What trained methods need from a family: text conditions, velocities on packed latents, the sampler's noise
    levels, partial sampling and attention capture. `cond` is the family's own text-condition value."""

    def encode_text(self, pipe: Any, prompts: list[str]) -> Any: ...

    def keyword_positions(self, pipe: Any, cond: Any, keyword: str) -> list[list[int]]: ...

    def velocity(self, pipe: Any, latents: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def noise(self, pipe: Any, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def sigmas(self, pipe: Any, steps: int) -> torch.Tensor: ...

    def sample_partial(
        self, pipe: Any, cond: Any, steps: int, stop: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def capture_attention(self, pipe: Any, block: int = -1) -> AbstractContextManager[dict[str, torch.Tensor]]: ...


@dataclass(frozen=True)
class TextSpace:
    """One text-embedding space and the transformer layers that read it raw.

    Attributes:
        name: key in the family's encoding output (e.g. "tokens": [N, L, d] per-token states, "pooled": [N, d]).
        layers: Linear modules (names relative to the transformer) whose input is exactly this space, so an
            input-side operator W <- W (I - D) computed in this space is exact there.
    """

    name: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ModelFamily:
    """A model family declared as data plus a few small functions."""

    name: str
    text_spaces: tuple[TextSpace, ...]
    lora_targets: dict[str, tuple[str, ...]]
    encode: TextEncoding
    default_max_sequence_length: MaxSequenceLength
    native_size: NativeSize
    training: TrainingOps | None = None  # None: the family has no training support (trained methods refuse it)
    # The first text space only ([N, L, d]), at a given length: what the lexicon index reads (`erasure_core.lexicon`)
    # at half the cost of `encode`. None: the index uses `encode`.
    encode_tokens: Callable[[Any, list[str], int], torch.Tensor] | None = None

    @property
    def video(self) -> bool:
        """Whether the family generates clips: its training ops map latent tokens to frames (`token_frames`)."""
        return hasattr(self.training, "token_frames")

    @property
    def edited_layers(self) -> tuple[str, ...]:
        return tuple(layer for space in self.text_spaces for layer in space.layers)

    def resolve_lora_targets(self, model: nn.Module, target_set: str) -> list[str]:
        """Expands a named target set (patterns with `{i}`) against the model's modules."""
        if target_set not in self.lora_targets:
            raise NoMatchingModuleError(
                f"family {self.name!r} has no LoRA target set {target_set!r}; known: {sorted(self.lora_targets)}"
            )
        names = {n for n, _ in model.named_modules()}
        found = []
        for pattern in self.lora_targets[target_set]:
            if "{i}" in pattern:
                i = 0
                while pattern.format(i=i) in names:
                    found.append(pattern.format(i=i))
                    i += 1
            elif pattern in names:
                found.append(pattern)
        if not found:
            raise NoMatchingModuleError(f"target set {target_set!r} matches no module of the {self.name} model")
        return found
