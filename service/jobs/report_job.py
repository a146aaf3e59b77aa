"""The body of one report job (`rp_...` ids), run by the same runners as erasure jobs (`JobExecutor.execute`).

A report reads everything from its record (erasure id, config with the judge chosen at creation), so any process
sharing the store can run or re-run it. It moves the record `queued -> running -> succeeded | failed | cancelled`,
writes progress (step, total, phase) at most once a second fenced by its attempt, holds the pipeline's generation
lock only per chunk of work (generations of other requests run in between), and publishes the report JSON and grid
PNG once. A report restarted after a crash starts over (it is minutes, not hours) until `MAX_ATTEMPTS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from erasure_core.errors import ErasureError
from erasure_core.reports import ReportConfig, build_report, get_judge
from service.errors import ErasureNotFoundError
from service.pipelines import PipelinePool
from service.store import ErasureStore, ErrorInfo, JobStatus, RecordFinishedError, StaleAttemptError
from service.store_reports import ReportNotFound, ReportRecord, report_store_for

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
PROGRESS_INTERVAL_S = 1.0


class ReportStopped(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class ReportJobs:
    """Runs report jobs against one pipeline pool and erasure store."""

    def __init__(self, pool: PipelinePool, store: ErasureStore) -> None:
        self.pool = pool
        self.store = store
        self.reports = report_store_for(store)

    def model_of(self, report_id: str) -> str:
        record = self.reports.find(report_id)
        if record is None:
            raise ErasureNotFoundError(f"no report {report_id!r}")
        return record.model

    def unfinished(self) -> list[str]:
        return [r.id for r in self.reports.list() if not r.status.terminal]

    def execute(self, report_id: str, should_stop: Callable[[], str | None]) -> str:
        """Runs the report to an outcome: succeeded, failed, cancelled, skipped or abandoned."""
        record = self.reports.find(report_id)
        if record is None or record.status.terminal:
            return "skipped"
        if record.attempts >= MAX_ATTEMPTS:
            self._fail(record, None, "worker_lost", f"the report was started {record.attempts} times without finishing")
            return "failed"
        try:
            record = self.reports.update(
                report_id,
                True,
                if_attempts=record.attempts,
                status=JobStatus.running,
                attempts=record.attempts + 1,
                started_at=time.time(),
            )
            self._run(record, should_stop)
        except ReportStopped as e:
            if e.outcome == "cancelled":
                self._cancel(record)
            return e.outcome
        except (StaleAttemptError, RecordFinishedError, ReportNotFound) as e:
            logger.warning("report %s: this run stops without writing: %s", report_id, e)
            return "abandoned"
        except Exception as e:
            code = e.code if isinstance(e, ErasureError) else "report_failed"
            logger.exception("report %s failed", report_id)
            self._fail(record, record.attempts, code, str(e))
            return "failed"
        return "succeeded"

    def _run(self, record: ReportRecord, should_stop: Callable[[], str | None]) -> None:
        erasure = self.store.find(record.erasure_id)
        if erasure is None or erasure.status != JobStatus.succeeded:
            raise ReportStopped("cancelled")
        artifact = self.store.load_artifact(record.erasure_id)
        handle = self.pool.get(record.model)
        config = ReportConfig(**{k: v for k, v in record.config.items() if k in ReportConfig.__dataclass_fields__})
        path = record.config.get("judge_path")
        judge = get_judge(
            str(record.config.get("judge", "auto")), handle.engine.pipe.transformer, Path(path) if path else None
        )
        progress = _Progress(self, record, should_stop)
        with handle.erase_lock:  # one report or erasure computation at a time per pipeline
            report = build_report(
                handle.engine, artifact, judge, config, progress, hold=lambda: handle.lock, erasure_id=erasure.id
            )
        report.data["erasure"]["artifact_sha256"] = erasure.artifact_sha256
        self.reports.finish(record.id, record.attempts, report.data, report.grid_png)
        logger.info("report %s on erasure %s done in %.1f s", record.id, erasure.id, report.data["seconds"])

    def _cancel(self, record: ReportRecord) -> None:
        try:
            self.reports.update(record.id, True, status=JobStatus.cancelled, finished_at=time.time())
        except (RecordFinishedError, ReportNotFound, StaleAttemptError):
            pass

    def _fail(self, record: ReportRecord, attempt: int | None, code: str, message: str) -> None:
        try:
            self.reports.update(
                record.id,
                True,
                attempt=attempt,
                status=JobStatus.failed,
                finished_at=time.time(),
                error=ErrorInfo(code=code, message=message),
            )
        except (RecordFinishedError, ReportNotFound, StaleAttemptError):
            pass


class _Progress:
    """The report's progress callback: stops it when asked (or when its record was cancelled or deleted), and writes
    step / total / phase into the record at most once a second."""

    def __init__(self, jobs: ReportJobs, record: ReportRecord, should_stop: Callable[[], str | None]) -> None:
        self.jobs, self.record, self.should_stop = jobs, record, should_stop
        self._last = 0.0

    def __call__(self, step: int, total: int, phase: str) -> None:
        if (stop := self.should_stop()) is not None:
            raise ReportStopped(stop)
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL_S and step < total:
            return
        self._last = now
        progress = {"step": step, "total": total, "phase": phase, "fraction": round(step / max(1, total), 3)}
        self.jobs.reports.update(self.record.id, True, attempt=self.record.attempts, progress=progress)
