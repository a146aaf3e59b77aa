"""Policy routes (operator only): the erasures every generation of a tenant runs with, changed without a restart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import PrincipalDep, RuntimeDep
from service.api.errors import ERROR_RESPONSES
from service.runtime.policy import PolicyEntry
from service.schemas import POLICY_TENANT_PATTERN, PolicyDeleted, PolicyList, PolicyPublic, PolicyUpdate

router = APIRouter(prefix="/v1/policies", tags=["policies"])

TenantPath = Annotated[str, Path(pattern=POLICY_TENANT_PATTERN, description="A tenant, or `*` for every tenant.")]


def _public(entry: PolicyEntry) -> PolicyPublic:
    return PolicyPublic(tenant=entry.tenant, erasures=list(entry.erasures), source=entry.source)


@router.get("", response_model=PolicyList, responses=ERROR_RESPONSES)
def list_policies(principal: PrincipalDep, runtime: RuntimeDep) -> PolicyList:
    """Every policy entry: from settings (read-only) and set through this API."""
    return PolicyList(data=[_public(e) for e in runtime.policies.entries(principal)])


@router.put("/{tenant}", response_model=PolicyPublic, responses=ERROR_RESPONSES)
def put_policy(tenant: TenantPath, body: PolicyUpdate, principal: PrincipalDep, runtime: RuntimeDep) -> PolicyPublic:
    """Make these erasures mandatory for every generation of `tenant` (`*`: every tenant), from the next request."""
    return _public(runtime.policies.put(principal, tenant, body.erasures))


@router.delete("/{tenant}", response_model=PolicyDeleted, responses=ERROR_RESPONSES)
def delete_policy(tenant: TenantPath, principal: PrincipalDep, runtime: RuntimeDep) -> PolicyDeleted:
    """Remove the API-managed policy of `tenant` (entries from settings stay)."""
    runtime.policies.remove(principal, tenant)
    return PolicyDeleted(tenant=tenant)
