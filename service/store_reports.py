"""Erasure reports kept beside the erasure store: one JSON record and one grid PNG per report.

A report is a job like a trained erasure (`service.jobs.report_job`): its record moves `queued -> running ->
succeeded | failed | cancelled`, carries progress, and its writes are fenced by attempt exactly as erasure records
are (`service.store.check_fence` semantics: start with a compare-and-set of `attempts`, later writes name it). The
record names its erasure and its tenant; a report is listed and served only under that erasure, to that tenant.

File store: `{data_dir}/reports/{id}.json` and `{id}.png`, written atomically (tmp + fsync + rename) under a file
lock shared by the API and workers. Redis store (`ERASURE_STORE=redis`): `{prefix}store:report:{id}` (JSON),
`{prefix}store:reportgrid:{id}` (PNG) and `{prefix}store:reports` (ids), each change one WATCH/MULTI transaction; the
grid and the `succeeded` record are written in one MULTI.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from erasure_core.artifacts import atomic_write_bytes
from service.store import ErasureStore, ErrorInfo, JobStatus, RecordFinishedError, StaleAttemptError

REPORT_PREFIX = "rp_"
_REPORT_ID = re.compile(r"rp_[0-9a-f]{24}")


class ReportNotFound(Exception):
    """The report record does not exist (deleted with its erasure)."""


def new_report_id() -> str:
    return REPORT_PREFIX + secrets.token_hex(12)


def is_valid_report_id(report_id: str) -> bool:
    return _REPORT_ID.fullmatch(report_id) is not None


class ReportRecord(BaseModel):
    id: str
    erasure_id: str
    tenant: str
    model: str
    config: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus = JobStatus.queued
    progress: dict[str, Any] = Field(default_factory=dict)  # step, total, phase
    attempts: int = 0
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    report: dict[str, Any] | None = None
    has_grid: bool = False
    error: ErrorInfo | None = None


def _checked(current: ReportRecord, require_active: bool, attempt: int | None, if_attempts: int | None) -> None:
    if require_active and current.status.terminal:
        raise RecordFinishedError(f"report {current.id} is already {current.status.value}")
    if if_attempts is not None and current.attempts != if_attempts:
        raise StaleAttemptError(f"report {current.id} was started again (attempt {current.attempts})")
    if attempt is not None and (current.attempts != attempt or current.status != JobStatus.running):
        raise StaleAttemptError(f"report {current.id}: attempt {attempt} no longer runs it")


class ReportStore(Protocol):
    def add(self, record: ReportRecord) -> ReportRecord: ...

    def find(self, report_id: str) -> ReportRecord | None: ...

    def list(self, erasure_id: str | None = None) -> list[ReportRecord]: ...

    def update(
        self,
        report_id: str,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        if_attempts: int | None = None,
        **changes: Any,
    ) -> ReportRecord: ...

    def finish(self, report_id: str, attempt: int, report: dict[str, Any], grid: bytes) -> ReportRecord: ...

    def grid(self, report_id: str) -> bytes | None: ...

    def delete(self, report_id: str) -> None: ...


class FileReportStore:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "reports"
        self._lock = threading.RLock()

    def _json(self, report_id: str) -> Path:
        return self.dir / f"{report_id}.json"

    def _png(self, report_id: str) -> Path:
        return self.dir / f"{report_id}.png"

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _write(self, record: ReportRecord) -> ReportRecord:
        atomic_write_bytes(self._json(record.id), record.model_dump_json(indent=1).encode())
        return record

    def add(self, record: ReportRecord) -> ReportRecord:
        with self._exclusive():
            return self._write(record)

    def find(self, report_id: str) -> ReportRecord | None:
        if not is_valid_report_id(report_id):
            return None
        try:
            return ReportRecord.model_validate_json(self._json(report_id).read_bytes())
        except (FileNotFoundError, ValidationError):
            return None

    def list(self, erasure_id: str | None = None) -> list[ReportRecord]:
        found = [self.find(p.stem) for p in self.dir.glob("rp_*.json")] if self.dir.is_dir() else []
        records = [r for r in found if r is not None and (erasure_id is None or r.erasure_id == erasure_id)]
        return sorted(records, key=lambda r: r.created_at)

    def _current(self, report_id: str) -> ReportRecord:
        current = self.find(report_id)
        if current is None:
            raise ReportNotFound(report_id)
        return current

    def update(
        self,
        report_id: str,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        if_attempts: int | None = None,
        **changes: Any,
    ) -> ReportRecord:
        with self._exclusive():
            current = self._current(report_id)
            _checked(current, require_active, attempt, if_attempts)
            return self._write(current.model_copy(update=changes))

    def finish(self, report_id: str, attempt: int, report: dict[str, Any], grid: bytes) -> ReportRecord:
        """Grid first, then the `succeeded` record naming it, only while this attempt still runs the report."""
        with self._exclusive():
            current = self._current(report_id)
            _checked(current, True, attempt, None)
            atomic_write_bytes(self._png(report_id), grid)
            done = {"status": JobStatus.succeeded, "report": report, "has_grid": True, "finished_at": time.time()}
            return self._write(current.model_copy(update=done))

    def grid(self, report_id: str) -> bytes | None:
        try:
            return self._png(report_id).read_bytes() if is_valid_report_id(report_id) else None
        except FileNotFoundError:
            return None

    def delete(self, report_id: str) -> None:
        with self._exclusive():
            self._json(report_id).unlink(missing_ok=True)
            self._png(report_id).unlink(missing_ok=True)


class RedisReportStore:
    def __init__(self, conn: Any, prefix: str) -> None:
        self.conn = conn
        self.base = f"{prefix}store:"
        self.ids = f"{self.base}reports"

    def _record_key(self, report_id: str) -> str:
        return f"{self.base}report:{report_id}"

    def _grid_key(self, report_id: str) -> str:
        return f"{self.base}reportgrid:{report_id}"

    def add(self, record: ReportRecord) -> ReportRecord:
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.set(self._record_key(record.id), record.model_dump_json())
            pipe.sadd(self.ids, record.id)
            pipe.execute()
        return record

    def find(self, report_id: str) -> ReportRecord | None:
        if not is_valid_report_id(report_id):
            return None
        raw = self.conn.get(self._record_key(report_id))
        try:
            return None if raw is None else ReportRecord.model_validate_json(raw)
        except ValidationError:
            return None

    def list(self, erasure_id: str | None = None) -> list[ReportRecord]:
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.conn.smembers(self.ids)]
        found = [self.find(i) for i in ids]
        records = [r for r in found if r is not None and (erasure_id is None or r.erasure_id == erasure_id)]
        return sorted(records, key=lambda r: r.created_at)

    def _transact(self, report_id: str, build: Callable[[Any, ReportRecord], ReportRecord]) -> ReportRecord:
        import redis

        key = self._record_key(report_id)
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise ReportNotFound(report_id)
                    current = ReportRecord.model_validate_json(raw)
                    pipe.multi()
                    record = build(pipe, current)
                    pipe.set(key, record.model_dump_json())
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def update(
        self,
        report_id: str,
        require_active: bool = False,
        *,
        attempt: int | None = None,
        if_attempts: int | None = None,
        **changes: Any,
    ) -> ReportRecord:
        def build(pipe: Any, current: ReportRecord) -> ReportRecord:
            _checked(current, require_active, attempt, if_attempts)
            return current.model_copy(update=changes)

        return self._transact(report_id, build)

    def finish(self, report_id: str, attempt: int, report: dict[str, Any], grid: bytes) -> ReportRecord:
        def build(pipe: Any, current: ReportRecord) -> ReportRecord:
            _checked(current, True, attempt, None)
            pipe.set(self._grid_key(report_id), grid)
            done = {"status": JobStatus.succeeded, "report": report, "has_grid": True, "finished_at": time.time()}
            return current.model_copy(update=done)

        return self._transact(report_id, build)

    def grid(self, report_id: str) -> bytes | None:
        if not is_valid_report_id(report_id):
            return None
        raw = self.conn.get(self._grid_key(report_id))
        return None if raw is None else bytes(raw)

    def delete(self, report_id: str) -> None:
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.delete(self._record_key(report_id), self._grid_key(report_id))
            pipe.srem(self.ids, report_id)
            pipe.execute()


def report_store_for(store: ErasureStore) -> ReportStore:
    """The report store beside an erasure store: in Redis for a Redis store, else under its folder."""
    conn = getattr(store, "conn", None)
    keys = getattr(store, "keys", None)
    if conn is not None and keys is not None:
        return RedisReportStore(conn, keys.prefix.removesuffix("store:"))
    return FileReportStore(store.root)
