"""The operator's policy operations (no HTTP here): list, set and remove the mandatory erasures of a tenant.

Only the operator may read or change the policy. Everything is checked before the policy file is written: the tenant
is known (or `*`), every erasure exists, is ready and is one the tenant may see, and no tenant erasure already in use
maps an anchor onto a concept the new policy removes (see `PolicyGate`).
"""

from __future__ import annotations

from service.errors import ErasureNotFoundError, ErasureNotReadyError
from service.runtime.policy import PolicyBook, PolicyEntry
from service.runtime.tenancy import Principal, Tenancy
from service.store import ErasureStore, JobStatus, is_valid_id


class PolicyService:
    def __init__(self, policy: PolicyBook, store: ErasureStore, tenancy: Tenancy) -> None:
        self.policy = policy
        self.store = store
        self.tenancy = tenancy

    def entries(self, principal: Principal) -> list[PolicyEntry]:
        self.tenancy.require_operator(principal)
        return self.policy.entries()

    def put(self, principal: Principal, tenant: str, erasures: list[str]) -> PolicyEntry:
        """Sets the API-managed policy of `tenant`. Raises ForbiddenError, InvalidRequestError (unknown tenant, an
        erasure of another tenant), ErasureNotFoundError, ErasureNotReadyError; nothing is written then."""
        self.tenancy.require_operator(principal)
        self.tenancy.check_policy_tenant(tenant)
        for erasure_id in erasures:
            record = self.store.find(erasure_id) if is_valid_id(erasure_id) else None
            if record is None:
                raise ErasureNotFoundError(f"no erasure {erasure_id!r}")
            if record.status != JobStatus.succeeded:
                raise ErasureNotReadyError(f"erasure {erasure_id} is {record.status.value}; a policy names ready ones")
            self.tenancy.check_policy_erasure(tenant, record)
        return self.policy.put(tenant, erasures)

    def remove(self, principal: Principal, tenant: str) -> None:
        self.tenancy.require_operator(principal)
        self.policy.remove(tenant)
