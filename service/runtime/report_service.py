"""Erasure reports as jobs (no HTTP here): create one on a ready erasure, read it, fetch its grid.

A report belongs to the tenant that asked for it and is reachable only under its erasure, which the tenant must be
able to see (its own, or an operator-wide one): anything else is 404, never 'forbidden'. The body is validated
(`ReportCreate`) and the queue checked before anything is written, so a refused request queues nothing.
"""

from __future__ import annotations

import logging

from service.errors import (
    ErasureNotFoundError,
    ErasureNotReadyError,
    QueueUnavailableError,
    QuotaExceededError,
    ReportGridNotFoundError,
    ReportNotFoundError,
)
from service.jobs.runner import JobRunner
from service.runtime.tenancy import Principal, Tenancy
from service.schemas import ReportCreate
from service.settings import Settings
from service.store import ErasureRecord, ErasureStore, JobStatus, is_valid_id
from service.store_reports import ReportRecord, new_report_id, report_store_for

logger = logging.getLogger(__name__)


class ReportService:
    def __init__(self, settings: Settings, store: ErasureStore, runner: JobRunner, tenancy: Tenancy) -> None:
        self.settings = settings
        self.store = store
        self.reports = report_store_for(store)
        self.runner = runner
        self.tenancy = tenancy

    def _erasure(self, principal: Principal, erasure_id: str) -> ErasureRecord:
        record = self.store.find(erasure_id) if is_valid_id(erasure_id) else None
        if record is None or not self.tenancy.can_see(principal, record):
            raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
        return record

    def create(self, principal: Principal, erasure_id: str, body: ReportCreate) -> ReportRecord:
        erasure = self._erasure(principal, erasure_id)
        if erasure.status != JobStatus.succeeded:
            raise ErasureNotReadyError(f"erasure {erasure_id} is {erasure.status.value}, not ready")
        self._check_quota(principal)
        self.runner.check_available()  # 503 queue_unavailable before anything is written
        config = body.model_dump() | {"judge": self.settings.report_judge}
        if self.settings.report_judge_path is not None:
            config["judge_path"] = str(self.settings.report_judge_path)
        record = ReportRecord(
            id=new_report_id(), erasure_id=erasure.id, tenant=principal.tenant, model=erasure.model, config=config
        )
        self.reports.add(record)
        try:
            self.runner.submit(record.id)
        except QueueUnavailableError:
            self.reports.delete(record.id)  # a refused request leaves nothing behind
            raise
        logger.info("report %s on erasure %s queued by tenant %s", record.id, erasure.id, principal.tenant)
        return record

    def _check_quota(self, principal: Principal) -> None:
        """A tenant may have `ERASURE_QUOTA_MAX_JOBS` reports queued or running at once (the operator: any)."""
        limit = self.settings.quota_max_jobs
        if principal.is_operator or limit <= 0:
            return
        active = [r for r in self.reports.list() if r.tenant == principal.tenant and not r.status.terminal]
        if len(active) >= limit:
            raise QuotaExceededError(f"{len(active)} reports of yours are queued or running (limit {limit})", 30)

    def list(self, principal: Principal, erasure_id: str) -> list[ReportRecord]:
        self._erasure(principal, erasure_id)
        return [r for r in self.reports.list(erasure_id) if r.tenant == principal.tenant]

    def get(self, principal: Principal, erasure_id: str, report_id: str) -> ReportRecord:
        self._erasure(principal, erasure_id)
        record = self.reports.find(report_id)
        if record is None or record.erasure_id != erasure_id or record.tenant != principal.tenant:
            raise ReportNotFoundError(f"no report {report_id!r} of erasure {erasure_id!r}")
        return record

    def grid(self, principal: Principal, erasure_id: str, report_id: str) -> bytes:
        record = self.get(principal, erasure_id, report_id)
        data = self.reports.grid(record.id) if record.status == JobStatus.succeeded else None
        if data is None:
            raise ReportGridNotFoundError(f"report {report_id} has no grid yet ({record.status.value})")
        return data
