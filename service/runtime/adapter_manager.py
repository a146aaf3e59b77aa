"""Erasures resident on a shared pipeline: an LRU cache with a byte budget, pinning, and exact activation.

Shaped like vLLM's `LRUCacheLoRAModelManager`: artifacts are loaded from the store on first use and attached to the
engine's `AdapterHost` under their record id; every use touches them; an erasure is pinned while a request runs
with it, so loading the rest of that request's set can never evict it; eviction detaches, so the cache and the
model's hooks cannot drift apart. Everything happens under the pipeline's lock, and `use(erasure_set)` holds that
lock from activation to the end of the caller's block: no request ever runs with any set but its own. The manager
is the one owner of activation on the service path: it activates the set, and the caller generates with
`engine.generate_active`, which does not activate again.

The byte budget covers the attached erasures and the fused copies the model keeps for sets of two or more (a set
of one uses its erasure's factors as they are): room is made by dropping cached fused copies of other sets first
(they are rebuilt on demand), then by evicting the least recently used erasures that no request has pinned.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from erasure_core.adapters import ErasureSet
from erasure_core.engines import ErasureEngine
from erasure_core.errors import ArtifactError
from service.errors import CapacityError, ErasureNotReadyError
from service.metrics import Metrics
from service.pipelines import PipelineHandle
from service.store import ErasureStore, ErrorInfo, JobStatus

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    nbytes: int
    pins: int = 0


@dataclass(frozen=True)
class Activation:
    """What `AdapterManager.use` yields: the engine with `erasures` active, and whether activating changed the set."""

    engine: ErasureEngine
    erasures: ErasureSet
    swapped: bool


class AdapterManager:
    """Erasures attached to one pipeline, least recently used first.

    Example:
        >>> manager = AdapterManager(handle, store, budget_bytes=2**30, metrics=Metrics())
        >>> with manager.use(ErasureSet(["er_0123..."])) as active:
        ...     images = active.engine.generate_active(prompts, seeds, params)
    """

    def __init__(self, handle: PipelineHandle, store: ErasureStore, budget_bytes: int, metrics: Metrics) -> None:
        self.handle = handle
        self.store = store
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        metrics.cache_bytes.set_function(lambda: self.resident_bytes, model=handle.name)

    @property
    def resident(self) -> tuple[str, ...]:
        return tuple(self._entries)

    @property
    def resident_bytes(self) -> int:
        """Attached erasures plus the fused copies of sets the model keeps."""
        return sum(e.nbytes for e in self._entries.values()) + self.handle.engine.host.fused_nbytes

    @property
    def active(self) -> ErasureSet:
        return self.handle.engine.active

    @contextmanager
    def use(self, erasures: Iterable[str]) -> Iterator[Activation]:
        """Holds the pipeline lock with exactly `erasures` active (attaching them first if needed)."""
        key = ErasureSet(erasures)
        with self.handle.lock:
            pinned: list[str] = []
            try:
                for erasure_id in key:
                    self._load(erasure_id, key)
                    self._entries[erasure_id].pins += 1
                    pinned.append(erasure_id)
                self._make_room(self.handle.engine.host.fused_cost(key), key)
                yield Activation(self.handle.engine, key, self._activate(key))
            finally:
                for erasure_id in pinned:
                    self._entries[erasure_id].pins -= 1

    def remove(self, erasure_id: str) -> bool:
        """Detaches an erasure (e.g. after DELETE). Returns False if it was not resident."""
        with self.handle.lock:
            if erasure_id not in self._entries:
                return False
            self._evict(erasure_id)
            return True

    def close(self) -> None:
        """Detaches everything this manager attached and restores the base model."""
        with self.handle.lock:
            self.handle.engine.activate([])
            for erasure_id in list(self._entries):
                self._evict(erasure_id)

    # -- under the lock --------------------------------------------------------------------------------------------

    def _activate(self, key: ErasureSet) -> bool:
        swapped = key != self.active
        started = time.perf_counter()
        self.handle.engine.activate(key)
        if swapped:
            self.metrics.swaps.inc(model=self.handle.name)
            self.metrics.swap_seconds.observe(time.perf_counter() - started, model=self.handle.name)
        return swapped

    def _load(self, erasure_id: str, key: ErasureSet) -> None:
        entry = self._entries.get(erasure_id)
        if entry is not None:
            self._entries.move_to_end(erasure_id)
            self.metrics.cache_hits.inc(model=self.handle.name)
            return
        self.metrics.cache_misses.inc(model=self.handle.name)
        try:
            artifact = self.store.load_artifact(erasure_id)
        except ArtifactError as e:
            self._quarantine(erasure_id, e)
            raise ErasureNotReadyError(f"erasure {erasure_id} is not usable: {e}") from e
        self._make_room(artifact.nbytes, key)
        self.handle.engine.attach(erasure_id, artifact)
        self._entries[erasure_id] = _Entry(nbytes=artifact.nbytes)
        logger.debug("attached %s (%d bytes) to %s", erasure_id, artifact.nbytes, self.handle.name)

    def _make_room(self, nbytes: int, key: ErasureSet) -> None:
        """Frees room for `nbytes` more: fused copies of sets other than `key` first, then unpinned erasures."""
        if self.resident_bytes + nbytes > self.budget_bytes:
            self.handle.engine.host.drop_fused(keep=key)
        for erasure_id in list(self._entries):
            if self.resident_bytes + nbytes <= self.budget_bytes:
                return
            if self._entries[erasure_id].pins == 0:
                self._evict(erasure_id)
                self.metrics.cache_evictions.inc(model=self.handle.name)
        if self.resident_bytes + nbytes > self.budget_bytes:
            raise CapacityError(
                f"the erasure set needs more than the adapter cache budget of {self.budget_bytes} bytes "
                f"({self.resident_bytes} pinned + {nbytes} new)"
            )

    def _evict(self, erasure_id: str) -> None:
        self.handle.engine.detach(erasure_id)
        del self._entries[erasure_id]
        logger.debug("detached %s from %s", erasure_id, self.handle.name)

    def _quarantine(self, erasure_id: str, error: Exception) -> None:
        """An artifact that fails validation is marked failed so no later request tries it again."""
        logger.error("erasure %s failed validation and is marked failed: %s", erasure_id, error)
        record = self.store.find(erasure_id)
        if record is not None and record.status == JobStatus.succeeded:
            failure = ErrorInfo(code="artifact_corrupt", message=str(error))
            self.store.update(erasure_id, status=JobStatus.failed, error=failure)
