"""The body of one erasure job, shared by every runner (the embedded one and `erasure worker`).

A job is identified by its erasure id alone: everything it needs (model, method, concept, options) is in the record,
so a job can be re-run after a crash by any process that shares the store. `execute_job` moves the record through
`queued -> running -> succeeded | failed | cancelled`, reports progress (step, total, latest losses, ETA) into it,
checkpoints trained methods under the store's `checkpoints/` folder, resumes from a checkpoint it finds, and
publishes the artifact at most once (`ErasureStore.save_artifact(require_active=True)`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from enum import StrEnum

from erasure_core.artifacts import ErasureArtifact
from erasure_core.checkpoints import FileCheckpoints
from erasure_core.concepts import ConceptSpec
from erasure_core.errors import ErasureError
from erasure_core.methods import get_method
from service.errors import ErasureFailedError, ErasureNotFoundError
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.store import ErasureRecord, ErasureStore, ErrorInfo, JobStatus, RecordFinishedError

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
        """`exclusive_pipeline`: a trained job holds the pipeline's generation lock while it runs (in-process
        training changes the shared modules' hooks; a worker process serves no generations and skips it). A
        closed-form erasure always holds it: it runs the shared text encoders (a fast tokenizer is not thread-safe)
        and, when it expands, the transformer with no erasure active — for a second or so, not a whole job."""
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self.exclusive_pipeline = exclusive_pipeline

    def execute(self, erasure_id: str, should_stop: StopCheck = _never, raise_errors: bool = False) -> Outcome:
        """Runs the job of `erasure_id` to an outcome. With `raise_errors` (inline jobs) a failure is recorded and
        then raised, so the request that ran it answers with the error."""
        record = self.store.find(erasure_id)
        if record is None or record.status.terminal:
            return Outcome.skipped
        if (stop := should_stop()) is not None:
            return self._stopped(erasure_id, record, stop)
        try:
            record = self._start(erasure_id, record)
            artifact = self._compute(record, should_stop)
            self._publish(erasure_id, artifact)
        except JobStopped as e:
            return self._stopped(erasure_id, record, e.outcome)
        except (RecordFinishedError, ErasureNotFoundError):
            logger.info("erasure %s was cancelled or deleted while its job ran; result dropped", erasure_id)
            self._cleanup(erasure_id)
            return self._count(record, Outcome.cancelled)
        except Exception as e:
            self._fail(erasure_id, e)
            self._count(record, Outcome.failed)
            if raise_errors:
                if isinstance(e, ErasureError):
                    raise
                raise ErasureFailedError(f"erasure {erasure_id} failed: {e}") from e
            logger.exception("erasure job %s failed", erasure_id)
            return Outcome.failed
        self._cleanup(erasure_id)
        return self._count(record, Outcome.succeeded)

    # -- steps -------------------------------------------------------------------------------------------------

    def _start(self, erasure_id: str, record: ErasureRecord) -> ErasureRecord:
        resumed = FileCheckpoints(self.store.checkpoint_path(erasure_id)).saved_step()
        if resumed is not None:
            logger.info("erasure %s resumes from its checkpoint at step %d", erasure_id, resumed)
        return self.store.update(
            erasure_id,
            require_active=True,
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
        checkpoints = FileCheckpoints(self.store.checkpoint_path(record.id)) if method.trained else None
        progress = ProgressReporter(self.store, record.id, should_stop)
        exclusive = handle.lock if self.exclusive_pipeline or not method.trained else nullcontext()
        with handle.erase_lock, exclusive:
            return handle.engine.erase(
                spec, method=method.name, options=record.options, progress=progress, checkpoints=checkpoints
            )

    def _publish(self, erasure_id: str, artifact: ErasureArtifact) -> None:
        meta = {k: artifact.metadata[k] for k in RECORD_METADATA_KEYS if k in artifact.metadata}
        self.store.save_artifact(erasure_id, artifact, require_active=True, finished_at=time.time(), metadata=meta)

    def _stopped(self, erasure_id: str, record: ErasureRecord, outcome: Outcome) -> Outcome:
        if outcome == Outcome.abandoned:
            logger.warning("erasure %s: this worker lost the job's lease; another worker continues it", erasure_id)
            return outcome
        try:
            self.store.update(erasure_id, require_active=True, status=JobStatus.cancelled, finished_at=time.time())
        except (RecordFinishedError, ErasureNotFoundError):
            pass  # cancelled (or deleted) by the API already
        logger.info("erasure %s cancelled", erasure_id)
        self._cleanup(erasure_id)
        return self._count(record, Outcome.cancelled)

    def _fail(self, erasure_id: str, error: Exception) -> None:
        code = error.code if isinstance(error, ErasureError) else ErasureFailedError.code
        try:
            failure = ErrorInfo(code=code, message=str(error))
            self.store.update(
                erasure_id, require_active=True, status=JobStatus.failed, finished_at=time.time(), error=failure
            )
        except (RecordFinishedError, ErasureNotFoundError):
            pass
        self._cleanup(erasure_id)

    def _cleanup(self, erasure_id: str) -> None:
        self.store.checkpoint_path(erasure_id).unlink(missing_ok=True)

    def _count(self, record: ErasureRecord, outcome: Outcome) -> Outcome:
        self.metrics.erasures.inc(method=record.method, outcome=outcome.value)
        return outcome


class ProgressReporter:
    """The `progress(step, total, losses)` callback a method calls: stops the job when asked, and writes step,
    total, latest losses and an ETA into the record at most once a second (and at the last step)."""

    def __init__(self, store: ErasureStore, erasure_id: str, should_stop: StopCheck) -> None:
        self.store = store
        self.erasure_id = erasure_id
        self.should_stop = should_stop
        self._last_write = 0.0
        self._first: tuple[int, float] | None = None

    def __call__(self, step: int, total: int, losses: dict[str, float]) -> None:
        if (stop := self.should_stop()) is not None:
            raise JobStopped(stop)
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
            status=JobStatus.running,
            step=step,
            total_steps=total,
            progress=min(1.0, step / total),
            losses=finite,
            eta_s=round(eta, 1) if eta is not None else None,
        )
