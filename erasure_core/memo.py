"""A per-prompt memo of tensors bounded by bytes (what a loaded model has already computed for a prompt)."""

from __future__ import annotations

from collections import OrderedDict

import torch


class PromptMemo:
    """Tensors computed per prompt (its encoded states, its velocities), least recently used first, within a byte
    budget.

    The preserve corpus is encoded once and reused by every erasure; requests add their own preserve terms and
    anchors. Without a bound, a stream of requests with new terms would grow the memo without end (at FLUX.1's
    sizes one prompt's T5 states are 8 MB).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: str) -> dict[str, torch.Tensor]:
        self._entries.move_to_end(prompt)
        return self._entries[prompt]

    def put(self, prompt: str, states: dict[str, torch.Tensor]) -> None:
        if prompt in self._entries:
            return
        self._entries[prompt] = states
        self.nbytes += sum(t.nbytes for t in states.values())
        while self.nbytes > self.budget_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= sum(t.nbytes for t in dropped.values())
