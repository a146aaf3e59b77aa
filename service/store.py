"""The erasure store: one JSON record and one artifact file per erasure, both written atomically.

Layout under `ERASURE_DATA_DIR`:
    records/{id}.json        the record (status, owner, spec, progress, timings, the artifact's sha256)
    artifacts/{id}.erasure   the artifact (safetensors, written by `erasure_core.artifacts.save_artifact`)
    checkpoints/{id}.ckpt    a trained job's latest checkpoint (removed when the job ends)
    .lock                    serialises record writes across processes (the API and `erasure worker`s share the
                             folder; `flock`, so it needs a local or lock-capable filesystem)

Write order is artifact first, then the record naming the artifact's sha256, each via tmp + fsync + rename. A crash
at any point therefore leaves either no record, a record that is not yet `succeeded`, or a `succeeded` record whose
artifact is complete. Recovery at startup drops leftover tmp files and artifacts no `succeeded` record owns, marks
records whose job was interrupted as failed, and marks any record whose artifact is missing or does not match its
hash as failed (removing the file), so a damaged erasure is never served. It deletes only what it understands: our
staging tmp files, records that are not valid JSON or not a valid record, and what they leave behind. A record or
artifact it cannot read (permissions, an I/O error, a directory in its place) is logged and left alone with
everything of its erasure, for an operator to fix.

Several processes may share one store (the API and its job workers). Every read checks the record file's identity
(inode, mtime, size: each write is a rename, so a new inode) and re-reads it when another process replaced it;
every write is a read-modify-write under the store's file lock, so a worker's progress report cannot overwrite the
API's cancellation (`update(..., require_active=True)` refuses to touch a finished record).

Job writes are fenced by attempt: `attempts` is the job's fencing token. A job starts with
`update(..., if_attempts=n, attempts=n + 1)` (a compare-and-set: of two processes starting the same job, one
loses), and every later write of that run passes `attempt=n + 1`, which is refused (`StaleAttemptError`) unless the
record is still `running` that attempt. A worker that paused past its lease (GC, SIGSTOP) while the reaper re-queued
its job or another worker started it can therefore change nothing: not progress, not the outcome, not the artifact.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from erasure_core.artifacts import ErasureArtifact, atomic_write_bytes, fsync_dir, load_artifact, save_artifact
from erasure_core.checkpoints import CheckpointStore, FileCheckpoints
from erasure_core.errors import ArtifactError
from service.errors import ErasureNotFoundError

logger = logging.getLogger(__name__)

ID_PREFIX = "er_"
_ID = re.compile(r"er_[0-9a-f]{24}")
# In a shared store a tmp file younger than this may be another process's write in flight: recovery leaves it.
_SHARED_TMP_GRACE_S = 3600.0


class RecordFinishedError(Exception):
    """A job tried to change a record that is already terminal (cancelled, failed or succeeded elsewhere)."""


class StaleAttemptError(Exception):
    """A write fenced by a job attempt was refused: the record no longer runs that attempt (another worker took the
    job over, the reaper re-queued it, or it was started again). The writer must stop without touching anything."""


class JobStatus(StrEnum):
    """The life cycle of an erasure job; `succeeded` is reported to API callers as `ready`."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErasureRecord(BaseModel):
    """Everything the service knows about one erasure except its weights."""

    id: str
    tenant: str
    model: str
    method: str
    spec: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus = JobStatus.queued
    progress: float = 0.0
    step: int = 0
    total_steps: int | None = None
    losses: dict[str, float] = Field(default_factory=dict)
    eta_s: float | None = None
    attempts: int = 0
    resumed_from_step: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    artifact_sha256: str | None = None
    artifact_bytes: int | None = None
    error: ErrorInfo | None = None


class JobCheckpoints(CheckpointStore, Protocol):
    """A job's checkpoint as the job executor needs it: what a method saves and loads, plus the saved step."""

    def saved_step(self) -> int | None: ...


def check_fence(current: ErasureRecord, attempt: int | None, if_attempts: int | None) -> None:
    """Raises StaleAttemptError when a fenced write no longer holds (see the module doc); logs the refusal."""
    if if_attempts is not None and current.attempts != if_attempts:
        reason = f"it was started again meanwhile (attempt {current.attempts}, expected {if_attempts})"
    elif attempt is not None and (current.attempts != attempt or current.status != JobStatus.running):
        reason = f"attempt {attempt} no longer runs it (now attempt {current.attempts}, {current.status.value})"
    else:
        return
    logger.warning("erasure %s: stale write refused: %s", current.id, reason)
    raise StaleAttemptError(f"erasure {current.id}: {reason}")


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(12)


def is_valid_id(erasure_id: str) -> bool:
    return _ID.fullmatch(erasure_id) is not None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ErasureStore:
    """Records cached in memory and kept coherent with the disk; artifacts on disk only. Thread- and process-safe.

    Example:
        >>> store = ErasureStore(Path("/data"))
        >>> store.recover()
        >>> record = store.add(ErasureRecord(id=new_id(), tenant="t", model="flux", method="ice", spec={...}))
        >>> store.save_artifact(record.id, artifact)   # artifact on disk; record now `succeeded`
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.artifacts_dir = self.root / "artifacts"
        self.checkpoints_dir = self.root / "checkpoints"
        self._records: dict[str, ErasureRecord] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def record_path(self, erasure_id: str) -> Path:
        return self.records_dir / f"{erasure_id}.json"

    def artifact_path(self, erasure_id: str) -> Path:
        return self.artifacts_dir / f"{erasure_id}.erasure"

    def checkpoint_path(self, erasure_id: str) -> Path:
        return self.checkpoints_dir / f"{erasure_id}.ckpt"

    def checkpoints(self, erasure_id: str) -> JobCheckpoints:
        """Where a trained job of `erasure_id` saves and finds its checkpoint (each backend gives its own kind)."""
        return FileCheckpoints(self.checkpoint_path(erasure_id))

    def drop_checkpoint(self, erasure_id: str) -> None:
        self.checkpoint_path(erasure_id).unlink(missing_ok=True)

    def ensure_dirs(self) -> None:
        for folder in (self.records_dir, self.artifacts_dir, self.checkpoints_dir):
            folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The in-process lock plus the store-wide file lock (re-entrant within one thread)."""
        with self._lock:
            if self._lock_fd is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fd = self._lock_fd
            if self._lock_depth == 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    # -- startup ---------------------------------------------------------------------------------------------------

    def recover(self, interrupt_unfinished: bool = True, shared: bool = False) -> dict[str, int]:
        """Loads every record, cleans up after crashes and returns counts of what it found.

        Args:
            interrupt_unfinished: mark `queued`/`running` records failed. False where unfinished jobs are resumed
                (the embedded runner resubmits them; the Redis queue's workers and reaper finish them).
            shared: other processes (job workers) use this store now: leave young tmp files, which may be their
                writes in flight. Artifacts are renamed into place under the store lock, which recovery holds, so
                an artifact without a `succeeded` record is always a leftover.
        """
        self.ensure_dirs()
        counts = {
            "records": 0,
            "tmp_removed": 0,
            "orphans_removed": 0,
            "marked_failed": 0,
            "checkpoints_removed": 0,
            "unreadable_skipped": 0,
        }
        with self._exclusive():
            counts["tmp_removed"] = self._remove_tmp_files(shared)
            self._records.clear()
            self._stamps.clear()
            unreadable: set[str] = set()  # erasures whose files we could not read: nothing of theirs is touched
            for path in sorted(self.records_dir.glob("er_*.json")):
                record = self._read_record(path, drop_invalid=True, unreadable=unreadable)
                if record is not None:
                    self._remember(record, path)
            counts["records"] = len(self._records)
            for record in list(self._records.values()):
                try:
                    if self._repair(record, interrupt_unfinished):
                        counts["marked_failed"] += 1
                except OSError as e:
                    logger.error("erasure %s: cannot check its artifact (%s); left as it is", record.id, e)
                    unreadable.add(record.id)
            for path in self.artifacts_dir.glob("er_*.erasure"):
                owner = self._records.get(path.stem)
                if path.stem in unreadable:
                    continue
                if owner is None or owner.status != JobStatus.succeeded:  # an orphan, or written just before a crash
                    path.unlink(missing_ok=True)
                    counts["orphans_removed"] += 1
            for path in self.checkpoints_dir.glob("er_*.ckpt"):
                owner = self._records.get(path.stem)
                if path.stem in unreadable:
                    continue
                if owner is None or owner.status.terminal:
                    path.unlink(missing_ok=True)
                    counts["checkpoints_removed"] += 1
            counts["unreadable_skipped"] = len(unreadable)
        logger.info("erasure store at %s: %s", self.root, counts)
        return counts

    def _remove_tmp_files(self, shared: bool) -> int:
        removed = 0
        now = time.time()
        for folder in (self.records_dir, self.artifacts_dir, self.checkpoints_dir):
            # ".*.tmp": our own staging files; ".tmp*": a library's (Rust `tempfile`) staging file from older code.
            for tmp in {*folder.glob(".*.tmp"), *folder.glob(".tmp*")}:
                try:
                    if shared and now - tmp.stat().st_mtime < _SHARED_TMP_GRACE_S:
                        continue
                    tmp.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _read_record(
        self, path: Path, drop_invalid: bool = False, unreadable: set[str] | None = None
    ) -> ErasureRecord | None:
        """The record in `path`, or None. With `drop_invalid` (recovery), a file that is read but is not a valid
        record is removed. A file that cannot be read at all (any OSError but its absence) is never removed: it is
        logged, left in place, and its id added to `unreadable`."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.error("cannot read erasure record %s (%s); left in place and skipped", path, e)
            if unreadable is not None:
                unreadable.add(path.stem)
            return None
        try:
            record = ErasureRecord.model_validate_json(data)
        except ValidationError as e:
            logger.error("invalid erasure record %s: %s", path, e)
            if drop_invalid:
                path.unlink(missing_ok=True)
            return None
        if record.id != path.stem or not is_valid_id(record.id):
            logger.error("erasure record %s: its id %r does not match the file name", path, record.id)
            if drop_invalid:
                path.unlink(missing_ok=True)
            return None
        return record

    def _repair(self, record: ErasureRecord, interrupt_unfinished: bool) -> bool:
        problem = None
        if record.status == JobStatus.succeeded:
            path = self.artifact_path(record.id)
            if not path.is_file():
                problem = ErrorInfo(code="artifact_missing", message="the erasure's artifact file is missing")
            elif _file_sha256(path) != record.artifact_sha256:
                problem = ErrorInfo(code="artifact_corrupt", message="the erasure's artifact does not match its hash")
        elif interrupt_unfinished and not record.status.terminal:
            problem = ErrorInfo(code="interrupted", message="the service restarted before the job finished")
        if problem is None:
            return False
        logger.error("erasure %s marked failed: %s", record.id, problem.message)
        self._persist(record.model_copy(update={"status": JobStatus.failed, "error": problem, "progress": 0.0}))
        return True

    # -- coherence with other processes ------------------------------------------------------------------------

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _remember(self, record: ErasureRecord, path: Path) -> None:
        stamp = self._stamp(path)
        if stamp is not None:
            self._records[record.id] = record
            self._stamps[record.id] = stamp

    def _fresh(self, erasure_id: str) -> ErasureRecord | None:
        """The record as it is on disk now (re-read only when another process replaced the file)."""
        path = self.record_path(erasure_id)
        with self._lock:
            stamp = self._stamp(path)
            if stamp is None:
                self._records.pop(erasure_id, None)
                self._stamps.pop(erasure_id, None)
                return None
            if self._stamps.get(erasure_id) != stamp:
                record = self._read_record(path)
                if record is None:
                    return self._records.get(erasure_id)
                self._records[erasure_id] = record
                self._stamps[erasure_id] = stamp
            return self._records.get(erasure_id)

    # -- records ---------------------------------------------------------------------------------------------------

    def _persist(self, record: ErasureRecord) -> ErasureRecord:
        path = self.record_path(record.id)
        atomic_write_bytes(path, record.model_dump_json(indent=1).encode())
        self._remember(record, path)
        return record

    def add(self, record: ErasureRecord) -> ErasureRecord:
        with self._exclusive():
            if self._fresh(record.id) is not None:
                raise ValueError(f"erasure id {record.id} already exists")
            return self._persist(record)

    def update(
        self,
        erasure_id: str,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        if_attempts: int | None = None,
        **changes: Any,
    ) -> ErasureRecord:
        """Applies field changes to the current record and persists it.

        Args:
            attempt: the write belongs to this run of the job: refused unless the record is `running` this attempt.
            if_attempts: apply only while the record's `attempts` is still this (a compare-and-set on the token).

        Raises:
            ErasureNotFoundError: the record was deleted.
            RecordFinishedError: `require_active` and the record is already terminal (e.g. cancelled meanwhile).
            StaleAttemptError: `attempt` or `if_attempts` no longer holds.
        """
        with self._exclusive():
            current = self._fresh_for_update(erasure_id, require_active)
            check_fence(current, attempt, if_attempts)
            return self._persist(current.model_copy(update=changes))

    def check_attempt(self, erasure_id: str, attempt: int) -> None:
        """Raises unless the record is still `running` `attempt` (a read: for writes outside the record, like
        checkpoints, whose backend cannot take the record's lock): ErasureNotFoundError (deleted),
        RecordFinishedError (cancelled or finished: the job ends as for `update(require_active=True)`), or
        StaleAttemptError (another attempt runs it)."""
        current = self.find(erasure_id)
        if current is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        if current.status.terminal:
            raise RecordFinishedError(f"erasure {erasure_id} is already {current.status.value}")
        check_fence(current, attempt, None)

    def _fresh_for_update(self, erasure_id: str, require_active: bool) -> ErasureRecord:
        """The current record, under the store lock the caller holds; raises as `update` documents."""
        current = self._fresh(erasure_id)
        if current is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        if require_active and current.status.terminal:
            raise RecordFinishedError(f"erasure {erasure_id} is already {current.status.value}")
        return current

    def get(self, erasure_id: str) -> ErasureRecord:
        record = self._fresh(erasure_id)
        if record is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        return record

    def find(self, erasure_id: str) -> ErasureRecord | None:
        return self._fresh(erasure_id)

    def list(self) -> list[ErasureRecord]:
        with self._lock:
            known = set(self._records) | {p.stem for p in self.records_dir.glob("er_*.json")}
            records = [r for r in (self._fresh(i) for i in known) if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    def delete(self, erasure_id: str) -> bool:
        """Removes the record, then the artifact and checkpoint (leftovers are orphans recovery removes)."""
        with self._exclusive():
            if self._fresh(erasure_id) is None:
                return False
            self.record_path(erasure_id).unlink(missing_ok=True)
            self._records.pop(erasure_id, None)
            self._stamps.pop(erasure_id, None)
            self.artifact_path(erasure_id).unlink(missing_ok=True)
            self.checkpoint_path(erasure_id).unlink(missing_ok=True)
        return True

    # -- artifacts -------------------------------------------------------------------------------------------------

    def save_artifact(
        self,
        erasure_id: str,
        artifact: ErasureArtifact,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> ErasureRecord:
        """Publishes the artifact and marks the record `succeeded` with its hash (plus `changes`).

        The artifact is written beside its final name first; then, under the store lock, it is renamed into place
        and the record updated. With `require_active`, a record that became terminal meanwhile (cancelled, or
        published by another worker) is left as it is and the written file is discarded: a job publishes at most
        once and never over another's artifact. With `attempt`, only that run of the job may publish (see `update`);
        a stale run's file is discarded and nothing changes.
        """
        staged = save_artifact(artifact, self.artifacts_dir / f".{erasure_id}.{secrets.token_hex(4)}.tmp")
        try:
            with self._exclusive():
                current = self._fresh_for_update(erasure_id, require_active)
                check_fence(current, attempt, None)
                final = self.artifact_path(erasure_id)
                os.replace(staged, final)
                fsync_dir(final.parent)
                return self._persist(
                    current.model_copy(
                        update={
                            "status": JobStatus.succeeded,
                            "progress": 1.0,
                            "eta_s": 0.0,
                            "artifact_sha256": _file_sha256(final),
                            "artifact_bytes": final.stat().st_size,
                            **changes,
                        }
                    )
                )
        finally:
            staged.unlink(missing_ok=True)

    def load_artifact(self, erasure_id: str) -> ErasureArtifact:
        """Loads a `succeeded` erasure's artifact after checking its file hash against the record.

        Raises:
            ErasureNotFoundError: no such record.
            ArtifactError: the record is not `succeeded`, or the file is missing, altered or invalid.
        """
        record = self.get(erasure_id)
        path = self.artifact_path(erasure_id)
        if record.status != JobStatus.succeeded or not path.is_file():
            raise ArtifactError(f"erasure {erasure_id} has no usable artifact (status {record.status.value})")
        if _file_sha256(path) != record.artifact_sha256:
            raise ArtifactError(f"erasure {erasure_id}: artifact file does not match the recorded hash")
        return load_artifact(path)
