"""Training checkpoints for trained erasure methods: tensors + JSON state in one safetensors file, atomic.

A job that is killed resumes from its last checkpoint; a half-written checkpoint is never read (tmp + rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from erasure_core.artifacts import atomic_write_safetensors

_STATE_KEY = "state"


class CheckpointStore(Protocol):
    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None: ...

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None: ...


class FileCheckpoints:
    """One checkpoint file, overwritten atomically at each save."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if not self.path.is_file():
            return None
        with safe_open(str(self.path), framework="pt") as handle:
            state = json.loads((handle.metadata() or {})[_STATE_KEY])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        return tensors, state

    def saved_state(self) -> dict[str, Any] | None:
        """The saved checkpoint's JSON state (reads only the header), or None when there is none."""
        if not self.path.is_file():
            return None
        with safe_open(str(self.path), framework="pt") as handle:
            state: dict[str, Any] = json.loads((handle.metadata() or {}).get(_STATE_KEY, "{}"))
        return state

    def saved_step(self) -> int | None:
        """The step of the saved checkpoint (reads only the header), or None when there is none."""
        step = (self.saved_state() or {}).get("step")
        return int(step) if step is not None else None

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        meta = {_STATE_KEY: json.dumps(state)}
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_safetensors(self.path, contiguous, meta)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
