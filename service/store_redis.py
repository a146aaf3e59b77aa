"""The erasure store on Redis (`ERASURE_STORE=redis`): for API replicas and workers on several machines.

The file store (`service.store`) needs one folder every process can lock; replicas on several machines share the
Redis they already use for the job queue instead. Keys, under the deployment's `ERASURE_QUEUE_PREFIX` like the
queue's own:
    {prefix}store:ids                 a set of every erasure id
    {prefix}store:record:{id}         the record, JSON (the same model as the file store's)
    {prefix}store:artifact:{id}       the artifact, safetensors bytes (only while the record is `succeeded`)
    {prefix}store:checkpoint:{id}     a trained job's latest checkpoint, safetensors bytes

Every change is one optimistic transaction (WATCH the record, read it, MULTI, EXEC; retried when another process
changed the record meanwhile), so `update(require_active=True)` keeps the file store's meaning: a worker's progress
report can never overwrite a cancellation. An artifact and the `succeeded` record naming its sha256 are written in
the same MULTI, and a checkpoint is one SET: Redis applies each whole or not at all, so a killed process leaves no
half-written artifact or checkpoint, and an artifact never exists without its record. Reads check the artifact's
sha256 against the record, like the file store. Durability is the Redis server's (AOF with `appendfsync everysec`
or stricter is what a deployment should run: see README).

`RedisErasureStore` subclasses `ErasureStore` so every part of the service that takes a store takes either; it
overrides every method those parts call and has no folders (`record_path` and friends are file-store only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
import torch
from pydantic import ValidationError
from redis.client import Pipeline
from safetensors.torch import load, save

from erasure_core.artifacts import MAX_ARTIFACT_BYTES, ErasureArtifact, artifact_from_bytes
from erasure_core.errors import ArtifactError
from service.errors import ErasureNotFoundError, StoreUnavailableError
from service.settings import Settings
from service.store import (
    ErasureRecord,
    ErasureStore,
    ErrorInfo,
    JobCheckpoints,
    JobStatus,
    RecordFinishedError,
    check_fence,
)

logger = logging.getLogger(__name__)

# Redis refuses bulk values above `proto-max-bulk-len` (512 MiB by default): the bound on one stored value here,
# on top of the artifact format's own limit.
MAX_VALUE_BYTES = min(MAX_ARTIFACT_BYTES, 512 * 1024**2)
_STATE_KEY = "state"  # the checkpoint's JSON state in the safetensors header (the same as FileCheckpoints)

T = TypeVar("T")
P = ParamSpec("P")


def _reachable(method: Callable[P, T]) -> Callable[P, T]:
    """Turns Redis being unreachable into StoreUnavailableError (503 `store_unavailable`), not an unexplained 500."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailableError(f"the erasure store (Redis) is unreachable: {e}") from e

    return guarded


class StoreKeys:
    """The store's Redis key names for one deployment prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}store:"
        self.ids = f"{self.prefix}ids"

    def record(self, erasure_id: str) -> str:
        return f"{self.prefix}record:{erasure_id}"

    def artifact(self, erasure_id: str) -> str:
        return f"{self.prefix}artifact:{erasure_id}"

    def checkpoint(self, erasure_id: str) -> str:
        return f"{self.prefix}checkpoint:{erasure_id}"

    def id_of(self, key: bytes | str) -> str:
        return (key.decode() if isinstance(key, bytes) else key).rpartition(":")[2]


class RedisCheckpoints:
    """One job's checkpoint as a single Redis value, replaced whole at each save (so never read half-written)."""

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        data = _raw(self.conn.get(self.key))
        if data is None:
            return None
        return load(data), json.loads(_header(data).get(_STATE_KEY, "{}"))

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        data = save(contiguous, metadata={_STATE_KEY: json.dumps(state)})
        if len(data) > MAX_VALUE_BYTES:
            raise ArtifactError(f"checkpoint of {len(data)} bytes exceeds the store's limit of {MAX_VALUE_BYTES}")
        self.conn.set(self.key, data)

    def saved_state(self) -> dict[str, Any] | None:
        """The saved state, reading only the safetensors header (GETRANGE), or None when there is none."""
        size = _raw(self.conn.getrange(self.key, 0, 7)) or b""
        if len(size) < 8:
            return None
        length = int.from_bytes(size, "little")
        header = json.loads(self.conn.getrange(self.key, 8, 8 + length - 1)).get("__metadata__") or {}
        state: dict[str, Any] = json.loads(header.get(_STATE_KEY, "{}"))
        return state

    def saved_step(self) -> int | None:
        step = (self.saved_state() or {}).get("step")
        return int(step) if step is not None else None

    def clear(self) -> None:
        self.conn.delete(self.key)


def _raw(value: Any) -> bytes | None:
    """A Redis reply as bytes (the client returns bytes; typed loosely by redis-py)."""
    return value.encode() if isinstance(value, str) else value


def _header(data: bytes) -> dict[str, str]:
    length = int.from_bytes(data[:8], "little")
    meta: dict[str, str] = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    return meta


def _parse(raw: bytes | None, erasure_id: str) -> ErasureRecord | None:
    """The stored record, or None when absent or not a valid record of this id (logged)."""
    if raw is None:
        return None
    try:
        record = ErasureRecord.model_validate_json(raw)
    except ValidationError as e:
        logger.error("invalid erasure record %s in Redis: %s", erasure_id, e)
        return None
    if record.id != erasure_id:
        logger.error("erasure record %s in Redis names id %r", erasure_id, record.id)
        return None
    return record


class RedisErasureStore(ErasureStore):
    """Records, artifacts and checkpoints in Redis; nothing cached in the process, so every replica sees every
    change at once. Thread- and process-safe (redis-py's pool; optimistic transactions).

    Example:
        >>> store = RedisErasureStore(redis.Redis.from_url("redis://127.0.0.1:6379/0"), prefix="erasure-")
        >>> store.recover(interrupt_unfinished=False)
    """

    def __init__(self, conn: redis.Redis, prefix: str) -> None:  # noqa: D107 - no folders: see the module doc
        self.conn = conn
        self.keys = StoreKeys(prefix)

    def ensure_dirs(self) -> None:
        """Nothing to create: Redis keys appear on first write."""

    def checkpoints(self, erasure_id: str) -> JobCheckpoints:
        return RedisCheckpoints(self.conn, self.keys.checkpoint(erasure_id))

    @_reachable
    def drop_checkpoint(self, erasure_id: str) -> None:
        self.conn.delete(self.keys.checkpoint(erasure_id))

    def _transact(self, erasure_id: str, build: Callable[[Pipeline, ErasureRecord | None], T]) -> T:
        """Runs `build(pipe, current record)` and applies what it queued on `pipe` atomically, retrying when the
        record changed in between; an exception from `build` aborts with nothing written."""
        key = self.keys.record(erasure_id)
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = _parse(_raw(pipe.get(key)), erasure_id)
                    pipe.multi()
                    result = build(pipe, current)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    @staticmethod
    def _active(erasure_id: str, current: ErasureRecord | None, require_active: bool) -> ErasureRecord:
        if current is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        if require_active and current.status.terminal:
            raise RecordFinishedError(f"erasure {erasure_id} is already {current.status.value}")
        return current

    def _put(self, pipe: Pipeline, record: ErasureRecord) -> ErasureRecord:
        pipe.set(self.keys.record(record.id), record.model_dump_json())
        pipe.sadd(self.keys.ids, record.id)
        return record

    # -- records ---------------------------------------------------------------------------------------------------

    @_reachable
    def add(self, record: ErasureRecord) -> ErasureRecord:
        def build(pipe: Pipeline, current: ErasureRecord | None) -> ErasureRecord:
            if current is not None:
                raise ValueError(f"erasure id {record.id} already exists")
            return self._put(pipe, record)

        return self._transact(record.id, build)

    @_reachable
    def update(
        self,
        erasure_id: str,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        if_attempts: int | None = None,
        **changes: Any,
    ) -> ErasureRecord:
        """Applies field changes to the current record atomically; fenced and raising like `ErasureStore.update`
        (the fence is checked on the record read under WATCH, so it holds at the moment of the write)."""

        def build(pipe: Pipeline, current: ErasureRecord | None) -> ErasureRecord:
            active = self._active(erasure_id, current, require_active)
            check_fence(active, attempt, if_attempts)
            return self._put(pipe, active.model_copy(update=changes))

        return self._transact(erasure_id, build)

    @_reachable
    def find(self, erasure_id: str) -> ErasureRecord | None:
        return _parse(_raw(self.conn.get(self.keys.record(erasure_id))), erasure_id)

    @_reachable
    def get(self, erasure_id: str) -> ErasureRecord:
        record = self.find(erasure_id)
        if record is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        return record

    @_reachable
    def list(self) -> list[ErasureRecord]:
        ids = sorted(self.keys.id_of(i) for i in self.conn.smembers(self.keys.ids))
        if not ids:
            return []
        raws = self.conn.mget([self.keys.record(i) for i in ids])
        records = [r for r in (_parse(_raw(raw), i) for i, raw in zip(ids, raws, strict=True)) if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    @_reachable
    def delete(self, erasure_id: str) -> bool:
        """Removes the record, its artifact and its checkpoint in one transaction."""

        def build(pipe: Pipeline, current: ErasureRecord | None) -> bool:
            if current is None:
                return False
            keys = self.keys
            pipe.delete(keys.record(erasure_id), keys.artifact(erasure_id), keys.checkpoint(erasure_id))
            pipe.srem(keys.ids, erasure_id)
            return True

        return self._transact(erasure_id, build)

    # -- artifacts -------------------------------------------------------------------------------------------------

    @_reachable
    def save_artifact(
        self,
        erasure_id: str,
        artifact: ErasureArtifact,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> ErasureRecord:
        """Publishes the artifact and the `succeeded` record naming its hash in one MULTI (see
        `ErasureStore.save_artifact` for `require_active` and `attempt`: a job publishes at most once, and only the
        run that holds the job)."""
        data = artifact.to_bytes()
        if len(data) > MAX_VALUE_BYTES:
            raise ArtifactError(f"artifact of {len(data)} bytes exceeds the store's limit of {MAX_VALUE_BYTES}")
        update = {
            "status": JobStatus.succeeded,
            "progress": 1.0,
            "eta_s": 0.0,
            "artifact_sha256": hashlib.sha256(data).hexdigest(),
            "artifact_bytes": len(data),
            **changes,
        }

        def build(pipe: Pipeline, current: ErasureRecord | None) -> ErasureRecord:
            active = self._active(erasure_id, current, require_active)
            check_fence(active, attempt, None)
            record = active.model_copy(update=update)
            pipe.set(self.keys.artifact(erasure_id), data)
            return self._put(pipe, record)

        return self._transact(erasure_id, build)

    @_reachable
    def load_artifact(self, erasure_id: str) -> ErasureArtifact:
        """Loads a `succeeded` erasure's artifact after checking its sha256 against the record (both read in one
        transaction, so a concurrent delete or publish is never seen half done)."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.record(erasure_id))
            pipe.get(self.keys.artifact(erasure_id))
            raw, data = pipe.execute()
        record, data = _parse(_raw(raw), erasure_id), _raw(data)
        if record is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        if record.status != JobStatus.succeeded or data is None:
            raise ArtifactError(f"erasure {erasure_id} has no usable artifact (status {record.status.value})")
        if hashlib.sha256(data).hexdigest() != record.artifact_sha256:
            raise ArtifactError(f"erasure {erasure_id}: stored artifact does not match the recorded hash")
        return artifact_from_bytes(data, source=f"erasure {erasure_id}")

    # -- startup ---------------------------------------------------------------------------------------------------

    @_reachable
    def recover(self, interrupt_unfinished: bool = True, shared: bool = False) -> dict[str, int]:
        """Checks every record and cleans up like `ErasureStore.recover`: invalid records are dropped, a
        `succeeded` one whose artifact is missing or altered is marked failed, unfinished jobs are failed when
        `interrupt_unfinished`, and artifacts or checkpoints no live record owns are removed. Each change is its
        own transaction, so replicas recovering at once (`shared` is implied) never undo each other's work."""
        counts = dict.fromkeys(
            ("records", "tmp_removed", "orphans_removed", "marked_failed", "checkpoints_removed", "unreadable_skipped"),
            0,
        )
        for member in self.conn.smembers(self.keys.ids):
            erasure_id = self.keys.id_of(member)
            raw = _raw(self.conn.get(self.keys.record(erasure_id)))
            if raw is None or _parse(raw, erasure_id) is None:
                self._drop_invalid(erasure_id)
                continue
            counts["records"] += 1
            counts["marked_failed"] += self._repair_one(erasure_id, interrupt_unfinished)
        counts["orphans_removed"] = self._remove_orphans(
            self.keys.artifact("*"), lambda r: r.status == JobStatus.succeeded
        )
        counts["checkpoints_removed"] = self._remove_orphans(self.keys.checkpoint("*"), lambda r: not r.status.terminal)
        logger.info("erasure store in Redis under %s: %s", self.keys.prefix, counts)
        return counts

    def _drop_invalid(self, erasure_id: str) -> None:
        def build(pipe: Pipeline, current: ErasureRecord | None) -> None:
            if current is None:
                keys = self.keys
                pipe.delete(keys.record(erasure_id), keys.artifact(erasure_id), keys.checkpoint(erasure_id))
                pipe.srem(keys.ids, erasure_id)

        self._transact(erasure_id, build)

    def _repair_one(self, erasure_id: str, interrupt_unfinished: bool) -> int:
        def build(pipe: Pipeline, current: ErasureRecord | None) -> int:
            problem = self._problem(current, interrupt_unfinished)
            if current is None or problem is None:
                return 0
            logger.error("erasure %s marked failed: %s", erasure_id, problem.message)
            pipe.delete(self.keys.artifact(erasure_id))
            self._put(pipe, current.model_copy(update={"status": JobStatus.failed, "error": problem, "progress": 0.0}))
            return 1

        return self._transact(erasure_id, build)

    def _problem(self, record: ErasureRecord | None, interrupt_unfinished: bool) -> ErrorInfo | None:
        if record is None:
            return None
        if record.status == JobStatus.succeeded:
            data = _raw(self.conn.get(self.keys.artifact(record.id)))
            if data is None:
                return ErrorInfo(code="artifact_missing", message="the erasure's artifact is missing")
            if hashlib.sha256(data).hexdigest() != record.artifact_sha256:
                return ErrorInfo(code="artifact_corrupt", message="the erasure's artifact does not match its hash")
        elif interrupt_unfinished and not record.status.terminal:
            return ErrorInfo(code="interrupted", message="the service restarted before the job finished")
        return None

    def _remove_orphans(self, pattern: str, owned: Callable[[ErasureRecord], bool]) -> int:
        """Deletes the values matching `pattern` whose record is gone or does not own one (`owned` false)."""
        removed = 0
        for key in self.conn.scan_iter(match=pattern, count=500):
            erasure_id = self.keys.id_of(key)

            def build(pipe: Pipeline, current: ErasureRecord | None, key: bytes = key) -> int:
                if current is not None and owned(current):
                    return 0
                pipe.delete(key)
                return 1

            removed += self._transact(erasure_id, build)
        return removed


def connect(settings: Settings) -> redis.Redis:
    """A client for `ERASURE_REDIS_URL` with `ERASURE_REDIS_PASSWORD[_FILE]` (the queue's `connect` lives a layer
    up, in service.jobs, which the store must not import)."""
    assert settings.redis_url
    timeout = settings.redis_timeout_s
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(
        settings.redis_url, password=password, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def open_store(settings: Settings) -> ErasureStore:
    """The store `ERASURE_STORE` names: the file store under `ERASURE_DATA_DIR`, or the Redis one."""
    if settings.store == "redis":
        return RedisErasureStore(connect(settings), settings.queue_prefix)
    return ErasureStore(settings.data_dir)
