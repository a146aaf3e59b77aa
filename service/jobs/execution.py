"""The body of one erasure job, shared by every runner (the embedded one and `erasure worker`).

A job is identified by its erasure id alone: everything it needs (model, method, concept, options) is in the record,
so a job can be re-run after a crash by any process that shares the store. `execute_job` moves the record through
`queued -> running -> succeeded | failed | cancelled`, reports progress (step, total, latest losses, ETA) into it,
checkpoints trained methods under the store's `checkpoints/` folder, resumes from a checkpoint it finds, and
publishes the artifact at most once (`ErasureStore.save_artifact(require_active=True)`).

Every write of a run is fenced by its attempt (see `service.store`): starting is a compare-and-set of the record's
`attempts`, and progress, checkpoints, the outcome and the artifact are written only while the record still runs
this attempt. A run whose write is refused (`StaleAttemptError`: another worker or the reaper took the job over) ends
as `abandoned` and touches nothing else, not even the checkpoint the new attempt resumes from.

In-process (the embedded runner) a trained job takes turns with generation on the shared pipeline
(`service.jobs.turns`): it holds the pipeline for one training step at a time.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from enum import StrEnum
from typing import Any

import torch

from erasure_core.artifacts import ErasureArtifact
from erasure_core.concepts import ConceptSpec
from erasure_core.errors import ErasureError
from erasure_core.methods import get_method
from service.errors import ErasureFailedError, ErasureNotFoundError
from service.jobs.report_job import ReportJobs
from service.jobs.turns import PipelineTurns
from service.metrics import Metrics
from service.pipelines import PipelineHandle, PipelinePool
from service.store import (
    ErasureRecord,
    ErasureStore,
    ErrorInfo,
    JobCheckpoints,
    JobStatus,
    RecordFinishedError,
    StaleAttemptError,
)
from service.store_reports import is_valid_report_id

logger = logging.getLogger(__name__)

# Artifact metadata copied into the record (the rest stays in the artifact's header).
RECORD_METADATA_KEYS = ("family", "base_model", "phrasings", "params", "stats", "library_version")
PROGRESS_INTERVAL_S = 1.0


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"  # already finished, deleted, or cancelled before it started
    abandoned = "abandoned"  # this process lost the job (its lease) to another worker: nothing written


class JobStopped(Exception):
    """Raised inside a running job to stop it: cancelled by the caller, or the lease was lost."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


# Asked at every progress report; returns None to go on, or the outcome to stop with.
StopCheck = Callable[[], Outcome | None]


def _never() -> Outcome | None:
    return None


class JobExecutor:
    """Runs jobs against one pipeline pool and store (one per process)."""

    def __init__(self, pool: PipelinePool, store: ErasureStore, metrics: Metrics, exclusive_pipeline: bool) -> None:
        """`exclusive_pipeline`: a trained job holds the pipeline's generation lock while it trains, one transformer
        call at a time (in-process training changes the shared modules' hooks; in between it gives the pipeline to
        waiting generations: `service.jobs.turns`); a worker process serves no generations and skips it. A closed-form
        erasure always holds it: it runs the shared text encoders (a fast tokenizer is not thread-safe) and, when it
        expands, the transformer with no erasure active — for a second or so, not a whole job."""
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self.exclusive_pipeline = exclusive_pipeline
        self.reports = ReportJobs(pool, store)  # the other job kind: erasure reports (`rp_...` ids)
        if not fences_attempts(store):
            logger.warning(
                "the %s store does not fence writes by attempt: a paused worker could write late", type(store).__name__
            )

    def execute(self, erasure_id: str, should_stop: StopCheck = _never, raise_errors: bool = False) -> Outcome:
        """Runs the job of `erasure_id` to an outcome. With `raise_errors` (inline jobs) a failure is recorded and
        then raised, so the request that ran it answers with the error."""
        if is_valid_report_id(erasure_id):
            return Outcome(self.reports.execute(erasure_id, should_stop))
        record = self.store.find(erasure_id)
        if record is None or record.status.terminal:
            return Outcome.skipped
        if (stop := should_stop()) is not None:
            return self._stopped(erasure_id, record, stop)
        try:
            record = self._start(erasure_id, record)
            artifact = self._compute(record, should_stop)
            self._publish(record, artifact)
        except JobStopped as e:
            return self._stopped(erasure_id, record, e.outcome)
        except StaleAttemptError as e:
            logger.warning("erasure %s: this run stops without writing anything: %s", erasure_id, e)
            return self._count(record, Outcome.abandoned)
        except (RecordFinishedError, ErasureNotFoundError):
            logger.info("erasure %s was cancelled or deleted while its job ran; result dropped", erasure_id)
            self._cleanup(erasure_id)
            return self._count(record, Outcome.cancelled)
        except Exception as e:
            if not self._fail(record, e):
                return self._count(record, Outcome.abandoned)
            self._count(record, Outcome.failed)
            if raise_errors:
                if isinstance(e, ErasureError):
                    raise
                raise ErasureFailedError(f"erasure {erasure_id} failed: {e}") from e
            logger.exception("erasure job %s failed", erasure_id)
            return Outcome.failed
        self._cleanup(erasure_id)
        return self._count(record, Outcome.succeeded)

    def job_model(self, job_id: str) -> str:
        """The model whose queue runs this job (an erasure's, or a report's erasure's)."""
        if is_valid_report_id(job_id):
            return self.reports.model_of(job_id)
        return self.store.get(job_id).model

    # -- steps -------------------------------------------------------------------------------------------------

    def _start(self, erasure_id: str, record: ErasureRecord) -> ErasureRecord:
        resumed = self.store.checkpoints(erasure_id).saved_step()
        if resumed is not None:
            logger.info("erasure %s resumes from its checkpoint at step %d", erasure_id, resumed)
        return self.store.update(
            erasure_id,
            require_active=True,
            if_attempts=record.attempts,  # of two processes starting this job, one wins
            status=JobStatus.running,
            started_at=record.started_at or time.time(),
            attempts=record.attempts + 1,
            resumed_from_step=resumed if resumed is not None else record.resumed_from_step,
            eta_s=None,
        )

    def _compute(self, record: ErasureRecord, should_stop: StopCheck) -> ErasureArtifact:
        handle = self.pool.get(record.model)
        method = get_method(record.method)
        spec = ConceptSpec.model_validate(record.spec)
        checkpoints = FencedCheckpoints(self.store, record) if method.trained else None
        turns = PipelineTurns(handle) if method.trained and self.exclusive_pipeline else None
        progress = ProgressReporter(self.store, record, should_stop, turns)
        with self._hold(handle, method.trained, turns):
            return handle.engine.erase(
                spec, method=method.name, options=record.options, progress=progress, checkpoints=checkpoints
            )

    def _hold(self, handle: PipelineHandle, trained: bool, turns: PipelineTurns | None) -> AbstractContextManager[Any]:
        """What the computation holds: turns on the shared pipeline for an in-process trained job, the erase lock
        alone in a worker process (which serves no generations), both locks for a closed-form erasure."""
        if turns is not None:
            return turns.held()
        if trained:
            return handle.erase_lock
        return _BothLocks(handle)

    def _publish(self, record: ErasureRecord, artifact: ErasureArtifact) -> None:
        meta = {k: artifact.metadata[k] for k in RECORD_METADATA_KEYS if k in artifact.metadata}
        self.store.save_artifact(
            record.id, artifact, require_active=True, attempt=record.attempts, finished_at=time.time(), metadata=meta
        )

    def _stopped(self, erasure_id: str, record: ErasureRecord, outcome: Outcome) -> Outcome:
        if outcome == Outcome.abandoned:
            logger.warning("erasure %s: this worker lost the job's lease; another worker continues it", erasure_id)
            return outcome
        attempt = record.attempts if record.status == JobStatus.running else None  # None: stopped before it started
        try:
            self.store.update(
                erasure_id, require_active=True, attempt=attempt, status=JobStatus.cancelled, finished_at=time.time()
            )
        except (RecordFinishedError, ErasureNotFoundError):
            pass  # cancelled (or deleted) by the API already
        except StaleAttemptError:
            return self._count(record, Outcome.abandoned)
        logger.info("erasure %s cancelled", erasure_id)
        self._cleanup(erasure_id)
        return self._count(record, Outcome.cancelled)

    def _fail(self, record: ErasureRecord, error: Exception) -> bool:
        """Records the failure of this run; False when the run was stale (nothing written, nothing cleaned up)."""
        code = error.code if isinstance(error, ErasureError) else ErasureFailedError.code
        attempt = record.attempts if record.status == JobStatus.running else None
        try:
            failure = ErrorInfo(code=code, message=str(error))
            self.store.update(
                record.id,
                require_active=True,
                attempt=attempt,
                status=JobStatus.failed,
                finished_at=time.time(),
                error=failure,
            )
        except (RecordFinishedError, ErasureNotFoundError):
            pass
        except StaleAttemptError:
            logger.warning("erasure %s: a stale run failed (%s); the current attempt goes on", record.id, error)
            return False
        self._cleanup(record.id)
        return True

    def _cleanup(self, erasure_id: str) -> None:
        self.store.drop_checkpoint(erasure_id)

    def _count(self, record: ErasureRecord, outcome: Outcome) -> Outcome:
        self.metrics.erasures.inc(method=record.method, outcome=outcome.value)
        return outcome


def fences_attempts(store: ErasureStore) -> bool:
    """Whether the store's writes take the attempt fence (a backend that does not would take it as a field)."""
    return all("attempt" in inspect.signature(getattr(store, name)).parameters for name in ("update", "save_artifact"))


class _BothLocks:
    """The erase lock and the generation lock, in the order every erasure takes them."""

    def __init__(self, handle: PipelineHandle) -> None:
        self.handle = handle

    def __enter__(self) -> None:
        self.handle.erase_lock.acquire()
        self.handle.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.handle.lock.release()
        self.handle.erase_lock.release()


class FencedCheckpoints:
    """A job's checkpoint, saved only while the record still runs this attempt: a stale worker must not overwrite
    the checkpoint the attempt that took over resumes from. The check is a read just before the write (the
    checkpoint backend cannot take the record's lock); the window left is one write, and what a stale run of the
    same seeded job writes there is the state the current run reaches at that step."""

    def __init__(self, store: ErasureStore, record: ErasureRecord) -> None:
        self.store = store
        self.erasure_id = record.id
        self.attempt = record.attempts
        self.inner: JobCheckpoints = store.checkpoints(record.id)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        return self.inner.load()

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.store.check_attempt(self.erasure_id, self.attempt)
        self.inner.save(tensors, state)

    def saved_step(self) -> int | None:
        return self.inner.saved_step()


class ProgressReporter:
    """The `progress(step, total, losses)` callback a method calls after each step: stops the job when asked,
    writes step, total, latest losses and an ETA into the record at most once a second (and at the last step),
    fenced by the run's attempt, and gives the shared pipeline a turn (`turns`) before the next step."""

    def __init__(
        self,
        store: ErasureStore,
        record: ErasureRecord,
        should_stop: StopCheck,
        turns: PipelineTurns | None = None,
    ) -> None:
        self.store = store
        self.erasure_id = record.id
        self.attempt = record.attempts
        self.should_stop = should_stop
        self.turns = turns
        self._last_write = 0.0
        self._first: tuple[int, float] | None = None

    def __call__(self, step: int, total: int, losses: dict[str, float]) -> None:
        if (stop := self.should_stop()) is not None:
            raise JobStopped(stop)
        self._report(step, total, losses)
        if self.turns is not None and step < total:
            self.turns.take_turn()

    def _report(self, step: int, total: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)  # the rate counts from this process's first step (a resume skips ahead)
        if total <= 0 or (step < total and now - self._last_write < PROGRESS_INTERVAL_S):
            return
        self._last_write = now
        done, since = step - self._first[0], now - self._first[1]
        eta = (total - step) * since / done if done > 0 and since > 0 else None
        finite = {k: round(float(v), 6) for k, v in losses.items() if math.isfinite(float(v))}
        self.store.update(
            self.erasure_id,
            require_active=True,
            attempt=self.attempt,
            status=JobStatus.running,
            step=step,
            total_steps=total,
            progress=min(1.0, step / total),
            losses=finite,
            eta_s=round(eta, 1) if eta is not None else None,
        )
