"""A trained job that shares its pipeline with generation: it holds the pipeline while it computes and gives it up
at every transformer call (at most every `TURN_EVERY_S`) and between steps, so queued generations (and closed-form
erasures) run in between instead of waiting for the whole job (minutes on a CPU, up to `options.steps` = 100000
steps on a GPU).

Why turns rather than a second copy of the transformer: a copy costs the transformer's full size again (24 GB for
FLUX.1-dev in bf16) and would still share the text encoders, whose fast tokenizers are not thread-safe. Turns cost
no memory; a generation waits at most for one transformer call of the job (a training step makes 5 to 12), or for
its text encoding.

What keeps activation exact across a turn:
- The trained method changes the shared transformer only through forward hooks it registers (EraseAnything++'s
  LoRA hooks) and attention processors it swaps in for one call (its attention capture). Before giving up the
  pipeline the job takes its hooks off the modules ("parks" them) and puts the original processors back; when its
  turn comes again it restores both. Hooks others registered meanwhile (an erasure attached for a generation) stay.
  A generation in between therefore runs the base model plus exactly the set its adapter manager activates.
- When the job's turn comes back it activates the empty set again: the job computes on the base model only.
Yielding inside a step is safe: the autograd graph the step has built so far holds its own tensors, and a
generation runs under no_grad on other tensors. The job's computation itself is untouched (same operations, same
order, same random state), so its artifact is the same as when it runs alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from service.pipelines import PipelineHandle

logger = logging.getLogger(__name__)

# The job offers the pipeline at most this often: a waiting generation starts within about this (plus the job's
# transformer call in progress), and the job loses at most HANDOFF_S / TURN_EVERY_S of its time when nobody waits.
TURN_EVERY_S = 0.05
# How long an offer stays open: a thread blocked on the lock wakes and takes it well within this (threading.Lock is
# not fair; without the pause the job would take it straight back).
HANDOFF_S = 0.002
_POLL_S = 0.0002

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
_Key = tuple[int, str, int]  # (module index, hook dict, hook id)


class PipelineTurns:
    """Holds a pipeline for an in-process trained job, and offers it to others at every turn.

    Example:
        >>> turns = PipelineTurns(handle)
        >>> with turns.held():            # the job computes holding the pipeline, offering it as it goes
        ...     engine.erase(spec, method="eraseanything", progress=lambda *_: turns.take_turn())
    """

    def __init__(self, handle: PipelineHandle) -> None:
        self.handle = handle
        self.model: nn.Module = handle.engine.pipe.transformer
        self.turns_taken = 0  # how many times another user of the pipeline ran in the job's turn
        self._modules: list[nn.Module] = []
        self._others: set[_Key] = set()  # hooks that are not the job's
        self._processors: dict[nn.Module, Any] = {}  # the attention processors in place when the job started
        self._owner: int | None = None
        self._last_offer = 0.0

    @contextmanager
    def held(self) -> Iterator[PipelineTurns]:
        """Takes the pipeline (erase lock, then generation lock: the order every erasure takes them in) for the
        job; it is offered at each transformer call of the job and at each `take_turn`; released at the end."""
        with self.handle.erase_lock, self.handle.lock:
            self._owner = threading.get_ident()
            self._last_offer = time.monotonic()
            offer = self.model.register_forward_pre_hook(self._before_call)
            self._modules = list(self.model.modules())
            self._others = self._hook_keys()
            self._processors = {m: m.processor for m in self._modules if hasattr(m, "set_processor")}
            try:
                yield self
            finally:
                offer.remove()
                self._owner = None

    def take_turn(self) -> None:
        """Offers the pipeline now if the last offer is `TURN_EVERY_S` old (the job's thread only)."""
        if threading.get_ident() != self._owner or time.monotonic() - self._last_offer < TURN_EVERY_S:
            return
        parked = self._park()
        self.handle.lock.release()
        self.handle.erase_lock.release()
        try:
            taken = self._offer()
        finally:
            self.handle.erase_lock.acquire()
            self.handle.lock.acquire()
            self._last_offer = time.monotonic()
            self.handle.engine.activate([])  # whoever ran in between left its own set active
            self._unpark(parked)
        self.turns_taken += taken

    def _before_call(self, module: nn.Module, args: Any) -> None:
        """The transformer's forward pre-hook: the job's calls offer the pipeline; others' pass through."""
        self.take_turn()

    def _offer(self) -> bool:
        """Leaves the pipeline free for HANDOFF_S, or until someone takes it; True when someone did."""
        deadline = time.monotonic() + HANDOFF_S
        while time.monotonic() < deadline:
            if self.handle.lock.locked() or self.handle.erase_lock.locked():
                return True
            time.sleep(_POLL_S)
        return False

    def _hook_keys(self) -> set[_Key]:
        return {
            (index, kind, key)
            for index, module in enumerate(self._modules)
            for kind in _HOOK_DICTS
            for key in getattr(module, kind)
        }

    def _park(self) -> tuple[list[tuple[nn.Module, str, int, Any]], list[tuple[nn.Module, Any]]]:
        """Takes the job's hooks off and puts the original attention processors back; returns what to restore."""
        hooks = []
        for index, kind, key in sorted(self._hook_keys() - self._others):
            module = self._modules[index]
            hooks.append((module, kind, key, getattr(module, kind).pop(key)))
        swapped = []
        for module, original in self._processors.items():
            if module.processor is not original:
                swapped.append((module, module.processor))
                _set_processor(module, original)
        return hooks, swapped

    def _unpark(self, parked: tuple[list[tuple[nn.Module, str, int, Any]], list[tuple[nn.Module, Any]]]) -> None:
        hooks, swapped = parked
        self._others = self._hook_keys()  # including any registered in between (an erasure attached for a request)
        for module, kind, key, hook in hooks:
            getattr(module, kind)[key] = hook
        for module, processor in swapped:
            _set_processor(module, processor)


def _set_processor(module: nn.Module, processor: Any) -> None:
    """diffusers' `Attention.set_processor` (it keeps the module's registry right when a processor is a module)."""
    setter: Any = getattr(module, "set_processor")  # noqa: B009 - typed as a tensor by nn.Module.__getattr__
    setter(processor)
