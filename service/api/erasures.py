"""Erasure routes: create (ICE: 201 ready; trained methods: 202 queued), list, get, delete, LoRA export."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.deps import PrincipalDep, ReadyRuntimeDep, RuntimeDep
from service.api.errors import ERROR_RESPONSES
from service.schemas import ErasureCreate, ErasureDeleted, ErasureList, ErasurePublic
from service.store import JobStatus

router = APIRouter(prefix="/v1/erasures", tags=["erasures"])


@router.post(
    "",
    status_code=201,
    response_model=ErasurePublic,
    responses={202: {"model": ErasurePublic, "description": "Queued (trained methods)"}, **ERROR_RESPONSES},
)
async def create_erasure(body: ErasureCreate, principal: PrincipalDep, runtime: ReadyRuntimeDep) -> Any:
    """Erase a concept. Closed-form methods answer 201 with the erasure ready; trained ones 202 queued."""
    record = await runtime.erasures.create(principal, body)
    public = ErasurePublic.from_record(record, runtime.tenancy.operator)
    if record.status == JobStatus.succeeded:
        return public
    return JSONResponse(public.model_dump(mode="json"), status_code=202)


@router.get("", response_model=ErasureList, responses=ERROR_RESPONSES)
def list_erasures(principal: PrincipalDep, runtime: RuntimeDep) -> ErasureList:
    """The caller's erasures and the operator-wide ones."""
    records = runtime.erasures.list(principal)
    return ErasureList(data=[ErasurePublic.from_record(r, runtime.tenancy.operator) for r in records])


@router.get("/{erasure_id}", response_model=ErasurePublic, responses=ERROR_RESPONSES)
def get_erasure(erasure_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> ErasurePublic:
    """Status, progress, timings and metadata of one erasure."""
    return ErasurePublic.from_record(runtime.erasures.get(principal, erasure_id), runtime.tenancy.operator)


@router.delete("/{erasure_id}", response_model=ErasureDeleted, responses=ERROR_RESPONSES)
def delete_erasure(erasure_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> ErasureDeleted:
    """Delete a finished erasure and its reports (waits for generations using it), or cancel a queued or running job:
    it stops at its next step and its record stays, `cancelled`, until deleted."""
    if runtime.erasures.delete(principal, erasure_id) is not None:
        return ErasureDeleted(id=erasure_id, deleted=False, status="cancelled")
    return ErasureDeleted(id=erasure_id)


@router.get(
    "/{erasure_id}/lora",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "LoRA safetensors"},
        **ERROR_RESPONSES,
    },
)
def export_lora(erasure_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> Response:
    """The erasure as a diffusers-compatible LoRA (safetensors; `pipe.load_lora_weights` accepts it)."""
    data = runtime.erasures.export_lora(principal, erasure_id)
    headers = {"Content-Disposition": f'attachment; filename="{erasure_id}.lora.safetensors"'}
    return Response(data, media_type="application/octet-stream", headers=headers)
