"""Job runners: where an erasure job executes.

A job is its erasure id; `service.jobs.execution.JobExecutor` runs it from the record. Closed-form methods (ICE) run
inline in the request (`run_inline`); trained methods are queued (`submit`):
  - `EmbeddedRunner` (no `ERASURE_REDIS_URL`): one background thread of the service process. Unfinished jobs are
    resubmitted when the service restarts and resume from their checkpoints; one already started
    `ERASURE_JOB_MAX_ATTEMPTS` times fails as `worker_lost` instead (a job that kills its process would otherwise
    restart with every start of the service, forever). A trained job takes turns with generation on the shared
    pipeline, one training step at a time (`service.jobs.turns`).
  - `RedisRunner` (`service.jobs.redis_queue`): an rq queue in Redis, executed by `erasure worker` processes.
Both give the same semantics: statuses, progress, cancellation (`cancel` asks a running job to stop at its next
step), crash safety.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from service.jobs.execution import JobExecutor, Outcome
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.settings import Settings
from service.store import (
    ErasureRecord,
    ErasureStore,
    ErrorInfo,
    JobStatus,
    RecordFinishedError,
    StaleAttemptError,
)

logger = logging.getLogger(__name__)


class JobRunner(Protocol):
    executor: JobExecutor

    def check_available(self) -> None:
        """Raises QueueUnavailableError when queued jobs cannot be accepted now (before anything is written)."""

    def run_inline(self, erasure_id: str) -> ErasureRecord: ...

    def submit(self, erasure_id: str) -> None: ...

    def cancel(self, erasure_id: str) -> None:
        """Asks the job to stop (the caller marks the record `cancelled`)."""

    def resume(self) -> int:
        """Called once the pipelines are loaded: picks up jobs a previous process left unfinished."""

    def close(self) -> None: ...


class EmbeddedRunner:
    """Runs jobs in this process: inline ones in the caller's thread, queued ones in one background thread."""

    def __init__(self, executor: JobExecutor, workers: int = 1, max_attempts: int = 3) -> None:
        self.executor = executor
        self.store = executor.store
        self.max_attempts = max_attempts
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="erasure-job")
        self._futures: dict[str, Future[Any]] = {}
        self._cancelled: set[str] = set()
        self._closing = False
        self._lock = threading.Lock()

    def check_available(self) -> None:
        return None

    def run_inline(self, erasure_id: str) -> ErasureRecord:
        """Runs the job now. Returns the `succeeded` record; raises the job's error after recording the failure."""
        self.executor.execute(erasure_id, raise_errors=True)
        return self.store.get(erasure_id)

    def submit(self, erasure_id: str) -> None:
        with self._lock:
            self._futures[erasure_id] = self._pool.submit(self._run, erasure_id)

    def cancel(self, erasure_id: str) -> None:
        with self._lock:
            self._cancelled.add(erasure_id)
            future = self._futures.get(erasure_id)
        if future is not None and future.cancel():
            self._forget(erasure_id)

    def resume(self) -> int:
        """Resubmits every job the store holds as queued or running (the process that ran it is gone), or fails it
        once it has been started `max_attempts` times. Returns how many were resubmitted."""
        resumed = 0
        for record in self.store.list():
            if record.status.terminal:
                continue
            if record.attempts >= self.max_attempts:
                self._give_up(record)
                continue
            logger.info("resuming erasure job %s left unfinished by a previous run", record.id)
            self.submit(record.id)
            resumed += 1
        # Reports start over; their job fails them itself once out of attempts.
        for report_id in self.executor.reports.unfinished():
            logger.info("resuming report job %s left unfinished by a previous run", report_id)
            self.submit(report_id)
            resumed += 1
        return resumed

    def _give_up(self, record: ErasureRecord) -> None:
        message = f"the service stopped {record.attempts} times while running this job"
        failure = ErrorInfo(code="worker_lost", message=message)
        try:
            self.store.update(
                record.id,
                require_active=True,
                if_attempts=record.attempts,
                status=JobStatus.failed,
                finished_at=time.time(),
                error=failure,
            )
        except (RecordFinishedError, StaleAttemptError):
            return
        self.store.drop_checkpoint(record.id)
        logger.error("erasure %s failed: %s", record.id, message)

    def close(self) -> None:
        """Stops a running job at its next step without finishing its record: the next start resumes it."""
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, erasure_id: str) -> Outcome:
        def should_stop() -> Outcome | None:
            if erasure_id in self._cancelled:
                return Outcome.cancelled
            return Outcome.abandoned if self._closing else None

        try:
            return self.executor.execute(erasure_id, should_stop)
        finally:
            self._forget(erasure_id)

    def _forget(self, erasure_id: str) -> None:
        with self._lock:
            self._futures.pop(erasure_id, None)
            self._cancelled.discard(erasure_id)


def create_runner(settings: Settings, pool: PipelinePool, store: ErasureStore, metrics: Metrics) -> JobRunner:
    """The job runner for these settings: the Redis queue when `ERASURE_REDIS_URL` is set, else the embedded one."""
    if settings.redis_url:
        from service.jobs.redis_queue import RedisRunner

        return RedisRunner(settings, JobExecutor(pool, store, metrics, exclusive_pipeline=True))
    executor = JobExecutor(pool, store, metrics, exclusive_pipeline=True)
    return EmbeddedRunner(executor, max_attempts=settings.job_max_attempts)
