"""Running erasure jobs and keeping their records current.

A job is a callable that computes an `ErasureArtifact` (reporting progress). The runner moves the record through
`queued -> running -> succeeded | failed | cancelled` and stores the artifact. Closed-form methods (ICE) run inline
in the request (`run_inline`); trained methods are queued (`submit`). The embedded runner executes queued jobs in
one background thread of this process; a Redis-backed runner with a separate worker process (`erasure worker`)
implements the same interface.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from erasure_core.artifacts import ErasureArtifact
from erasure_core.errors import ErasureError
from service.errors import ErasureFailedError, ErasureNotFoundError
from service.runtime.metrics import Metrics
from service.runtime.registry import ErasureRecord, ErasureStore, ErrorInfo, JobStatus
from service.settings import Settings

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
Work = Callable[[Progress], ErasureArtifact]

# Artifact metadata copied into the record (the rest stays in the artifact's header).
RECORD_METADATA_KEYS = ("family", "base_model", "phrasings", "params", "stats", "library_version")
_PROGRESS_INTERVAL_S = 1.0


class JobRunner(Protocol):
    def run_inline(self, erasure_id: str, work: Work) -> ErasureRecord: ...

    def submit(self, erasure_id: str, work: Work) -> None: ...

    def cancel(self, erasure_id: str) -> bool: ...

    def close(self) -> None: ...


class EmbeddedRunner:
    """Runs jobs in this process: inline ones in the caller's thread, queued ones in one background thread."""

    def __init__(self, store: ErasureStore, metrics: Metrics, workers: int = 1) -> None:
        self.store = store
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="erasure-job")
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def run_inline(self, erasure_id: str, work: Work) -> ErasureRecord:
        """Runs the job now. Returns the `succeeded` record; raises the job's error after recording the failure."""
        return self._run(erasure_id, work)

    def submit(self, erasure_id: str, work: Work) -> None:
        with self._lock:
            self._futures[erasure_id] = self._pool.submit(self._run_quietly, erasure_id, work)

    def cancel(self, erasure_id: str) -> bool:
        """Cancels a job that has not started yet. Returns False when it is running or finished."""
        with self._lock:
            future = self._futures.pop(erasure_id, None)
        return future is not None and future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run_quietly(self, erasure_id: str, work: Work) -> None:
        try:
            self._run(erasure_id, work)
        except Exception:
            logger.exception("erasure job %s failed", erasure_id)
        finally:
            with self._lock:
                self._futures.pop(erasure_id, None)

    def _run(self, erasure_id: str, work: Work) -> ErasureRecord:
        record = self.store.update(erasure_id, status=JobStatus.running, started_at=time.time())
        try:
            artifact = work(self._progress_reporter(erasure_id))
            meta = {k: artifact.metadata[k] for k in RECORD_METADATA_KEYS if k in artifact.metadata}
            record = self.store.save_artifact(erasure_id, artifact, finished_at=time.time(), metadata=meta)
        except ErasureNotFoundError:
            logger.info("erasure %s was deleted while its job ran; dropping the result", erasure_id)
            self.store.artifact_path(erasure_id).unlink(missing_ok=True)
            self.metrics.erasures.inc(method=record.method, outcome="cancelled")
            raise
        except Exception as e:
            self._fail(erasure_id, e)
            self.metrics.erasures.inc(method=record.method, outcome="failed")
            if isinstance(e, ErasureError):
                raise
            raise ErasureFailedError(f"erasure {erasure_id} failed: {e}") from e
        self.metrics.erasures.inc(method=record.method, outcome="succeeded")
        return record

    def _fail(self, erasure_id: str, error: Exception) -> None:
        code = error.code if isinstance(error, ErasureError) else ErasureFailedError.code
        try:
            failure = ErrorInfo(code=code, message=str(error))
            self.store.update(erasure_id, status=JobStatus.failed, finished_at=time.time(), error=failure)
        except ErasureNotFoundError:
            pass

    def _progress_reporter(self, erasure_id: str) -> Progress:
        last = [0.0]

        def report(step: int, total: int, _values: dict[str, float]) -> None:
            now = time.monotonic()
            if total > 0 and (step >= total or now - last[0] >= _PROGRESS_INTERVAL_S):
                last[0] = now
                self.store.update(erasure_id, progress=min(1.0, step / total))

        return report


def create_runner(settings: Settings, store: ErasureStore, metrics: Metrics) -> JobRunner:
    """The job runner for these settings. Without `ERASURE_REDIS_URL` it is the embedded runner."""
    if settings.redis_url:
        # The Redis queue (rq) and `erasure worker` arrive with the LoRA-methods issue; closed-form methods never
        # need them, so the embedded runner serves until then.
        logger.warning("ERASURE_REDIS_URL is set but the Redis job queue is not implemented yet; jobs run in-process")
    return EmbeddedRunner(store, metrics)
