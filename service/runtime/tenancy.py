"""API keys, tenants, visibility and the operator's mandatory-erasure policy.

Each API key belongs to one tenant. A tenant sees and uses its own erasures plus the operator-wide ones (those
created by the operator tenant); the operator sees everything. Ids a caller may not see are reported exactly like
ids that do not exist, so nobody learns of another tenant's erasures. With no keys configured, auth is off and
every caller is the default tenant.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from service.errors import ForbiddenError, UnauthorizedError
from service.settings import Settings
from service.store import ErasureRecord


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    tenant: str
    is_operator: bool


class Tenancy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.operator = settings.operator_tenant
        self._keys = [(key.encode(), tenant) for key, tenant in settings.api_keys.items()]

    def authenticate(self, api_key: str | None) -> Principal:
        """The caller of a request carrying `api_key` (None when absent). Raises UnauthorizedError."""
        if not self._keys:
            return self._principal(self.settings.default_tenant)
        if not api_key:
            raise UnauthorizedError("an API key is required: send 'Authorization: Bearer <key>'")
        presented = api_key.encode()
        tenant = None
        for key, owner in self._keys:  # compare against every key in constant time
            if hmac.compare_digest(key, presented):
                tenant = owner
        if tenant is None:
            raise UnauthorizedError("invalid API key")
        return self._principal(tenant)

    def _principal(self, tenant: str) -> Principal:
        return Principal(tenant=tenant, is_operator=tenant == self.operator)

    def can_see(self, principal: Principal, record: ErasureRecord) -> bool:
        return principal.is_operator or record.tenant in (principal.tenant, self.operator)

    def check_delete(self, principal: Principal, record: ErasureRecord) -> None:
        """Raises ForbiddenError when a tenant tries to delete an operator-wide erasure."""
        if not (principal.is_operator or record.tenant == principal.tenant):
            raise ForbiddenError(f"erasure {record.id} is operator-wide; only the operator can delete it")

    def mandatory(self, principal: Principal) -> list[str]:
        """Erasure ids the operator's policy applies to every generation of this tenant."""
        return list(self.settings.mandatory_erasures.get(principal.tenant, []))
