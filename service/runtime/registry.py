"""The erasure store: one JSON record and one artifact file per erasure, both written atomically.

Layout under `ERASURE_DATA_DIR`:
    records/{id}.json        the record (status, owner, spec, timings, the artifact's sha256)
    artifacts/{id}.erasure   the artifact (safetensors, written by `erasure_core.artifacts.save_artifact`)

Write order is artifact first, then the record naming the artifact's sha256, each via tmp + fsync + rename. A crash
at any point therefore leaves either no record, a record that is not yet `succeeded`, or a `succeeded` record whose
artifact is complete. Recovery at startup drops leftover tmp files and artifacts no `succeeded` record owns, marks
records whose job was interrupted as failed, and marks any record whose artifact is missing or does not match its
hash as failed (removing the file), so a damaged erasure is never served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from erasure_core.artifacts import ErasureArtifact, load_artifact, save_artifact
from erasure_core.errors import ArtifactError
from service.errors import ErasureNotFoundError

logger = logging.getLogger(__name__)

ID_PREFIX = "er_"
_ID = re.compile(r"^er_[0-9a-f]{24}$")


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
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    artifact_sha256: str | None = None
    artifact_bytes: int | None = None
    error: ErrorInfo | None = None


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(12)


def is_valid_id(erasure_id: str) -> bool:
    return bool(_ID.match(erasure_id))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ErasureStore:
    """Records in memory, mirrored to disk; artifacts on disk only. Thread-safe.

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
        self._records: dict[str, ErasureRecord] = {}
        self._lock = threading.RLock()

    def record_path(self, erasure_id: str) -> Path:
        return self.records_dir / f"{erasure_id}.json"

    def artifact_path(self, erasure_id: str) -> Path:
        return self.artifacts_dir / f"{erasure_id}.erasure"

    # -- startup ---------------------------------------------------------------------------------------------------

    def recover(self, interrupt_unfinished: bool = True) -> dict[str, int]:
        """Loads every record, cleans up after crashes and returns counts of what it found.

        Args:
            interrupt_unfinished: mark `queued`/`running` records failed (the embedded runner lost them on restart).
        """
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        counts = {"records": 0, "tmp_removed": 0, "orphans_removed": 0, "marked_failed": 0}
        for folder in (self.records_dir, self.artifacts_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                counts["tmp_removed"] += 1
        with self._lock:
            self._records.clear()
            for path in sorted(self.records_dir.glob("er_*.json")):
                record = self._read_record(path)
                if record is not None:
                    self._records[record.id] = record
            counts["records"] = len(self._records)
            for record in list(self._records.values()):
                if self._repair(record, interrupt_unfinished):
                    counts["marked_failed"] += 1
            for path in self.artifacts_dir.glob("er_*.erasure"):
                owner = self._records.get(path.stem)
                if owner is None or owner.status != JobStatus.succeeded:  # orphan, or written just before a crash
                    path.unlink(missing_ok=True)
                    counts["orphans_removed"] += 1
        logger.info("erasure store at %s: %s", self.root, counts)
        return counts

    def _read_record(self, path: Path) -> ErasureRecord | None:
        try:
            record = ErasureRecord.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as e:
            logger.error("dropping unreadable erasure record %s: %s", path, e)
            path.unlink(missing_ok=True)
            return None
        if record.id != path.stem or not is_valid_id(record.id):
            logger.error("dropping erasure record %s: its id %r does not match the file name", path, record.id)
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

    # -- records ---------------------------------------------------------------------------------------------------

    def _persist(self, record: ErasureRecord) -> ErasureRecord:
        _write_atomic(self.record_path(record.id), record.model_dump_json(indent=1).encode())
        self._records[record.id] = record
        return record

    def add(self, record: ErasureRecord) -> ErasureRecord:
        with self._lock:
            if record.id in self._records:
                raise ValueError(f"erasure id {record.id} already exists")
            return self._persist(record)

    def update(self, erasure_id: str, **changes: Any) -> ErasureRecord:
        """Applies field changes to a record and persists it. Raises ErasureNotFoundError if it was deleted."""
        with self._lock:
            current = self.get(erasure_id)
            return self._persist(current.model_copy(update=changes))

    def get(self, erasure_id: str) -> ErasureRecord:
        with self._lock:
            record = self._records.get(erasure_id)
        if record is None:
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        return record

    def find(self, erasure_id: str) -> ErasureRecord | None:
        with self._lock:
            return self._records.get(erasure_id)

    def list(self) -> list[ErasureRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created_at)

    def delete(self, erasure_id: str) -> bool:
        """Removes the record, then the artifact (an artifact without a record is an orphan recovery removes)."""
        with self._lock:
            if self._records.pop(erasure_id, None) is None:
                return False
            self.record_path(erasure_id).unlink(missing_ok=True)
            self.artifact_path(erasure_id).unlink(missing_ok=True)
        return True

    # -- artifacts -------------------------------------------------------------------------------------------------

    def save_artifact(self, erasure_id: str, artifact: ErasureArtifact, **changes: Any) -> ErasureRecord:
        """Writes the artifact, then marks the record `succeeded` with the artifact's hash (plus `changes`)."""
        path = save_artifact(artifact, self.artifact_path(erasure_id))
        return self.update(
            erasure_id,
            status=JobStatus.succeeded,
            progress=1.0,
            artifact_sha256=_file_sha256(path),
            artifact_bytes=path.stat().st_size,
            **changes,
        )

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
