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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from erasure_core.adapters import ErasureSet
from erasure_core.artifacts import ErasureArtifact
from erasure_core.engines import ErasureEngine
from erasure_core.errors import ArtifactError
from service.errors import CapacityError, ErasureNotReadyError, PolicyConflictError
from service.metrics import Metrics
from service.pipelines import PipelineHandle
from service.store import ErasureStore, ErrorInfo, JobStatus

logger = logging.getLogger(__name__)

_RESPONSE_CACHE = 4096


@dataclass
class _Entry:
    nbytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    modules: frozenset[str] = frozenset()  # the layers its deltas act on
    pins: int = 0
    guarded: bool = False
    guard_modules: frozenset[str] = frozenset()
    self_response: float = 0.0  # how far its guard moves its own concept (the scale anchors are compared with)

    @property
    def anchor(self) -> str | None:
        concept = self.metadata.get("concept")
        anchor = concept.get("anchor") if isinstance(concept, dict) else None
        return anchor if isinstance(anchor, str) and anchor else None


# An anchor the guard of a policy erasure moves at least this fraction as far as the erasure's own concept is taken
# for that concept. Measured on the demo world's triangle guard (own concept 1.12): its in-caption synonyms 0.86-0.92,
# "mountain peak" (draws triangles) 0.63, other shapes 0.14-0.18, colours 0.13-0.35, "dog" 0.50.
ANCHOR_CONFLICT_RATIO = 0.5


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

    def __init__(
        self,
        handle: PipelineHandle,
        store: ErasureStore,
        budget_bytes: int,
        metrics: Metrics,
        guarded_ids: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self.handle = handle
        self.store = store
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        # Erasures applied through their guards wherever they are active: the ones the operator's policy names.
        self.guarded_ids = guarded_ids
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._responses: OrderedDict[tuple[str, str], float] = OrderedDict()
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
        """Holds the pipeline lock with exactly `erasures` active (attaching them first if needed); those the policy
        names are applied through their guards, above everything else in the set."""
        key = ErasureSet(erasures)
        with self.handle.lock:
            policy = self.guarded_ids()
            guarded = ErasureSet(i for i in key if i in policy)
            pinned: list[str] = []
            try:
                for erasure_id in key:
                    self._load(erasure_id, key, guarded)
                    self._entries[erasure_id].pins += 1
                    pinned.append(erasure_id)
                self._check_anchors(key, guarded)
                self._make_room(self.handle.engine.host.fused_cost(key, guarded), key, guarded)
                yield Activation(self.handle.engine, key, self._activate(key, guarded))
            finally:
                for erasure_id in pinned:
                    self._entries[erasure_id].pins -= 1

    def anchor_conflicts(self, anchor: str, policy_ids: Iterable[str]) -> list[str]:
        """The policy erasures (loaded and guarded as needed) whose concept `anchor` stands for."""
        policy = ErasureSet(policy_ids)
        with self.handle.lock:
            for erasure_id in policy:
                self._load(erasure_id, policy, policy)
            return self._conflicts(anchor, policy)

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

    def _activate(self, key: ErasureSet, guarded: ErasureSet) -> bool:
        host = self.handle.engine.host
        swapped = (key, guarded) != (host.active, host.guarded)
        started = time.perf_counter()
        self.handle.engine.activate(key, guarded)
        if swapped:
            self.metrics.swaps.inc(model=self.handle.name)
            self.metrics.swap_seconds.observe(time.perf_counter() - started, model=self.handle.name)
        return swapped

    def _load(self, erasure_id: str, key: ErasureSet, guarded: ErasureSet) -> None:
        entry = self._entries.get(erasure_id)
        if entry is not None:
            self._entries.move_to_end(erasure_id)
            self.metrics.cache_hits.inc(model=self.handle.name)
        else:
            self.metrics.cache_misses.inc(model=self.handle.name)
            try:
                artifact = self.store.load_artifact(erasure_id)
            except ArtifactError as e:
                self._quarantine(erasure_id, e)
                raise ErasureNotReadyError(f"erasure {erasure_id} is not usable: {e}") from e
            self._make_room(artifact.nbytes, key, guarded)
            self.handle.engine.attach(erasure_id, artifact)
            entry = self._entries[erasure_id] = _Entry(artifact.nbytes, artifact.metadata, frozenset(artifact.deltas))
            logger.debug("attached %s (%d bytes) to %s", erasure_id, artifact.nbytes, self.handle.name)
        if erasure_id in guarded and not entry.guarded:
            self._guard(erasure_id, entry)

    def _guard(self, erasure_id: str, entry: _Entry) -> None:
        """Computes the guard of a policy erasure once (about as long as an ICE erasure) and keeps it with it."""
        started = time.perf_counter()
        artifact = ErasureArtifact(deltas={}, metadata=entry.metadata)
        try:
            self.handle.engine.guard(erasure_id, artifact)
        except Exception as e:  # the policy fails closed: no generation runs without it
            logger.exception("the guard of policy erasure %s could not be computed", erasure_id)
            raise ErasureNotReadyError(f"a mandatory erasure ({erasure_id}) cannot be applied: {e}") from e
        entry.nbytes += self.handle.engine.host.guard_nbytes(erasure_id)
        entry.guard_modules = frozenset(self.handle.engine.host.guard_factors(erasure_id))
        concept = entry.metadata.get("concept", {})
        entry.self_response = self.handle.engine.guard_response(erasure_id, [str(concept.get("concept", ""))])
        entry.guarded = True
        logger.info("guard of %s computed in %.2f s", erasure_id, time.perf_counter() - started)

    def _check_anchors(self, key: ErasureSet, guarded: ErasureSet) -> None:
        """Refuses a set in which an erasure maps its concept onto one a guarded (policy) erasure removes, through
        layers the guards do not cover (a trained LoRA's): the set would draw the removed concept. An erasure acting
        only on guarded layers needs no check: the guards act after it there."""
        if not guarded:
            return
        covered = frozenset().union(*(self._entries[i].guard_modules for i in guarded))
        for erasure_id in key:
            entry = self._entries[erasure_id]
            anchor = entry.anchor
            if erasure_id in guarded or anchor is None or entry.modules <= covered:
                continue
            conflicts = self._conflicts(anchor, guarded)
            if conflicts:
                raise PolicyConflictError(
                    f"erasure {erasure_id} maps its concept onto {anchor!r}, which a mandatory erasure "
                    f"({', '.join(conflicts)}) removes; it cannot be used under this policy"
                )

    def _conflicts(self, anchor: str, guarded: ErasureSet) -> list[str]:
        found = []
        for policy_id in guarded:
            entry = self._entries[policy_id]
            cache_key = (policy_id, anchor)
            response = self._responses.get(cache_key)
            if response is None:
                response = self.handle.engine.guard_response(policy_id, [anchor])
                self._responses[cache_key] = response
                if len(self._responses) > _RESPONSE_CACHE:
                    self._responses.popitem(last=False)
            if response >= ANCHOR_CONFLICT_RATIO * entry.self_response:
                found.append(policy_id)
        return found

    def _make_room(self, nbytes: int, key: ErasureSet, guarded: ErasureSet = ErasureSet()) -> None:
        """Frees room for `nbytes` more: fused copies of sets other than `key` first, then unpinned erasures."""
        if self.resident_bytes + nbytes > self.budget_bytes:
            self.handle.engine.host.drop_fused(keep=key, keep_guarded=guarded)
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
        for cache_key in [k for k in self._responses if k[0] == erasure_id]:
            del self._responses[cache_key]
        del self._entries[erasure_id]
        logger.debug("detached %s from %s", erasure_id, self.handle.name)

    def _quarantine(self, erasure_id: str, error: Exception) -> None:
        """An artifact that fails validation is marked failed so no later request tries it again."""
        logger.error("erasure %s failed validation and is marked failed: %s", erasure_id, error)
        record = self.store.find(erasure_id)
        if record is not None and record.status == JobStatus.succeeded:
            failure = ErrorInfo(code="artifact_corrupt", message=str(error))
            self.store.update(erasure_id, status=JobStatus.failed, error=failure)
