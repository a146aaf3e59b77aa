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
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.engines import ErasureEngine
from erasure_core.errors import ArtifactError
from service.errors import CapacityError, ErasureNotReadyError, PolicyConflictError
from service.metrics import Metrics
from service.pipelines import PipelineHandle
from service.store import ErasureStore, ErrorInfo, JobStatus

logger = logging.getLogger(__name__)

_RESPONSE_CACHE = 4096
_GUARD_SETS = 16  # combinations of policy erasures whose joint guard stays attached


@dataclass
class _Entry:
    nbytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    pins: int = 0
    solo_guard: dict[str, LowRankDelta] | None = None  # its own guard, for anchor checks (computed on first need)
    self_response: float = 0.0  # how far that guard moves its own concept (the scale anchors are compared with)

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
        """Attached erasures plus the fused copies of sets and the policy guards the model keeps."""
        host = self.handle.engine.host
        return sum(e.nbytes for e in self._entries.values()) + host.fused_nbytes + host.guard_nbytes

    @property
    def active(self) -> ErasureSet:
        return self.handle.engine.active

    @contextmanager
    def use(self, erasures: Iterable[str]) -> Iterator[Activation]:
        """Holds the pipeline lock with exactly `erasures` active (attaching them first if needed); those the policy
        names are applied through their guards, above everything else in the set."""
        key = ErasureSet(erasures)
        policy = self.guarded_ids()  # read before the lock: with a Redis store it is a network round trip
        guarded = ErasureSet(i for i in key if i in policy)
        with self.handle.lock:
            pinned: list[str] = []
            try:
                for erasure_id in key:
                    self._load(erasure_id, key, guarded)
                    self._entries[erasure_id].pins += 1
                    pinned.append(erasure_id)
                self._ensure_guard(guarded)
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
                self._load(erasure_id, policy, ErasureSet())
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
            entry = self._entries[erasure_id] = _Entry(artifact.nbytes, artifact.metadata)
            logger.debug("attached %s (%d bytes) to %s", erasure_id, artifact.nbytes, self.handle.name)

    def _compute_guard(self, erasure_ids: ErasureSet) -> dict[str, LowRankDelta]:
        """One guard for the concepts of these erasures (about as long as one ICE erasure)."""
        started = time.perf_counter()
        artifacts = [ErasureArtifact(deltas={}, metadata=self._entries[i].metadata) for i in erasure_ids]
        try:
            guard = self.handle.engine.compute_guard(artifacts)
        except Exception as e:  # the policy fails closed: no generation runs without it
            logger.exception("the guard of policy erasures %s could not be computed", list(erasure_ids))
            raise ErasureNotReadyError(f"mandatory erasures {list(erasure_ids)} cannot be applied: {e}") from e
        logger.info("guard of %s computed in %.2f s", list(erasure_ids), time.perf_counter() - started)
        return guard

    def _ensure_guard(self, guarded: ErasureSet) -> None:
        """Attaches the joint guard of the policy erasures of a set, once per such combination (LRU-bounded)."""
        host = self.handle.engine.host
        if not guarded or guarded in host.guards:
            return
        self.handle.engine.attach_guard(guarded, self._compute_guard(guarded))
        for old in host.guards[:-_GUARD_SETS]:
            if old != host.guarded:
                host.detach_guard(old)

    def _check_anchors(self, key: ErasureSet, guarded: ErasureSet) -> None:
        """Refuses a set in which an erasure maps its concept onto one a guarded (policy) erasure removes: the set
        would draw the removed concept from the erasure's own prompts. The guard alone does not settle it: a trained
        LoRA acts in layers no guard reaches, and even on the guarded layers a remap's outputs are only close to the
        concept's, so the guard leaves some through (10-15% on the fills world's "heart" mapped onto "star")."""
        if not guarded:
            return
        for erasure_id in key:
            anchor = self._entries[erasure_id].anchor
            if erasure_id in guarded or anchor is None:
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
            if entry.solo_guard is None:
                entry.solo_guard = self._compute_guard(ErasureSet([policy_id]))
                concept = str(entry.metadata.get("concept", {}).get("concept", ""))
                entry.self_response = self.handle.engine.guard_response(entry.solo_guard, [concept])
            cache_key = (policy_id, anchor)
            response = self._responses.get(cache_key)
            if response is None:
                response = self.handle.engine.guard_response(entry.solo_guard, [anchor])
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
