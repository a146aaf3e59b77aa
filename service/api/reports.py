"""Erasure report routes: queue a report (202), list, poll, and fetch its before/after grid PNG."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from fastapi.responses import JSONResponse

from service.api.deps import PrincipalDep, ReadyRuntimeDep, RuntimeDep
from service.api.errors import ERROR_RESPONSES
from service.schemas import ReportCreate, ReportList, ReportProgress, ReportPublic
from service.store import JobStatus
from service.store_reports import ReportRecord

router = APIRouter(prefix="/v1/erasures/{erasure_id}/reports", tags=["reports"])


def public(record: ReportRecord) -> ReportPublic:
    status = "ready" if record.status == JobStatus.succeeded else record.status.value
    grid = f"/v1/erasures/{record.erasure_id}/reports/{record.id}/grid.png" if record.has_grid else None
    return ReportPublic.model_validate(
        {
            "id": record.id,
            "erasure_id": record.erasure_id,
            "status": status,
            "progress": ReportProgress.model_validate(record.progress),
            "config": {k: v for k, v in record.config.items() if k != "judge_path"},
            "attempts": record.attempts,
            "created_at": record.created_at,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "grid_url": grid,
            "report": record.report,
            "error": record.error.model_dump() if record.error else None,
        }
    )


@router.post("", status_code=202, response_model=ReportPublic, responses=ERROR_RESPONSES)
def create_report(
    erasure_id: str,
    principal: PrincipalDep,
    runtime: ReadyRuntimeDep,
    body: Annotated[ReportCreate | None, Body()] = None,
) -> JSONResponse:
    """Queue a report on a ready erasure: efficacy, robustness (paraphrases, misspellings, a white-box attack),
    usability and a before/after grid, over fixed seeds. Poll it with GET."""
    record = runtime.reports.create(principal, erasure_id, body or ReportCreate())
    return JSONResponse(public(record).model_dump(mode="json"), status_code=202)


@router.get("", response_model=ReportList, responses=ERROR_RESPONSES)
def list_reports(erasure_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> ReportList:
    """The caller's reports on this erasure."""
    return ReportList(data=[public(r) for r in runtime.reports.list(principal, erasure_id)])


@router.get("/{report_id}", response_model=ReportPublic, responses=ERROR_RESPONSES)
def get_report(erasure_id: str, report_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> ReportPublic:
    """Status and progress (step, total, phase); once ready, the report."""
    return public(runtime.reports.get(principal, erasure_id, report_id))


@router.get(
    "/{report_id}/grid.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The before/after grid"}, **ERROR_RESPONSES},
)
def get_grid(erasure_id: str, report_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> Response:
    """Rows = prompts, columns = seeds, each cell without | with the erasure (404 `report_grid_not_found` until
    the report is ready)."""
    return Response(runtime.reports.grid(principal, erasure_id, report_id), media_type="image/png")
