"""Erasures resident on a shared pipeline: an LRU cache with a byte budget, pinning, and exact activation.

Shaped like vLLM's `LRUCacheLoRAModelManager`: artifacts are loaded from the store on first use and attached to the
engine's `AdapterHost` under their record id; every use touches them; an erasure is pinned while a request runs
with it, so loading the rest of that request's set can never evict it; eviction detaches, so the cache and the
model's hooks cannot drift apart. Everything happens under the pipeline's lock, and `use(ids)` holds that lock
from activation to the end of the caller's block: no request ever runs with any set but its own.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from erasure_core.errors import ArtifactError
from service.errors import CapacityError, ErasureNotReadyError
from service.runtime.metrics import Metrics
from service.runtime.pipelines import PipelineHandle
from service.runtime.registry import ErasureStore, ErrorInfo, JobStatus

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    nbytes: int
    pins: int = 0


class AdapterManager:
    """Erasures attached to one pipeline, least recently used first.

    Example:
        >>> manager = AdapterManager(handle, store, budget_bytes=2**30, metrics=Metrics())
        >>> with manager.use(("er_0123...",)) as swapped:
        ...     images = handle.engine.generate(prompts, seeds, params, erasures=["er_0123..."])
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
        return sum(e.nbytes for e in self._entries.values())

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self.handle.engine.host.active)

    @contextmanager
    def use(self, ids: Sequence[str]) -> Iterator[bool]:
        """Holds the pipeline lock with exactly `ids` active; yields whether the active set changed."""
        key = tuple(sorted(set(ids)))
        with self.handle.lock:
            pinned: list[str] = []
            try:
                for erasure_id in key:
                    self._load(erasure_id)
                    self._entries[erasure_id].pins += 1
                    pinned.append(erasure_id)
                yield self._activate(key)
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

    def _activate(self, key: tuple[str, ...]) -> bool:
        swapped = key != self.active
        started = time.perf_counter()
        self.handle.engine.activate(key)
        if swapped:
            self.metrics.swaps.inc(model=self.handle.name)
            self.metrics.swap_seconds.observe(time.perf_counter() - started, model=self.handle.name)
        return swapped

    def _load(self, erasure_id: str) -> None:
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
        self._make_room(artifact.nbytes)
        self.handle.engine.attach(erasure_id, artifact)
        self._entries[erasure_id] = _Entry(nbytes=artifact.nbytes)
        logger.debug("attached %s (%d bytes) to %s", erasure_id, artifact.nbytes, self.handle.name)

    def _make_room(self, nbytes: int) -> None:
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
