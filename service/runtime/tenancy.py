"""API keys, tenants, visibility and the operator's mandatory-erasure policy.

Each API key belongs to one tenant. A tenant sees and uses its own erasures plus the operator-wide ones (those
created by the operator tenant); the operator sees everything. Ids a caller may not see are reported exactly like
ids that do not exist, so nobody learns of another tenant's erasures. With auth off (`ERASURE_AUTH=off`, which the
settings allow only with no keys) every caller is the default tenant.

Keys are kept as SHA-256 digests (configured in the clear or as `sha256:<hex>`); a presented key is hashed once and
compared with every digest in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from service.errors import (
    ErasureInPolicyError,
    ForbiddenError,
    InvalidRequestError,
    TenantNotFoundError,
    UnauthorizedError,
)
from service.runtime.policy import ALL_TENANTS, PolicyBook
from service.settings import HASHED_KEY_PREFIX, Settings
from service.store import ErasureRecord


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    tenant: str
    is_operator: bool


class Tenancy:
    def __init__(self, settings: Settings, policy: PolicyBook | None = None) -> None:
        self.settings = settings
        self.operator = settings.operator_tenant
        self.policy = policy or PolicyBook(settings)
        self._keys = [(_digest(key), tenant) for key, tenant in settings.api_keys.items()]

    @property
    def tenants(self) -> frozenset[str]:
        """Every tenant a caller can be: the owners of the API keys and the operator (with auth off: the default
        tenant)."""
        if not self.settings.auth_enabled:
            return frozenset({self.settings.default_tenant})
        return frozenset({*(tenant for _, tenant in self._keys), self.operator})

    def require_operator(self, principal: Principal) -> None:
        if not principal.is_operator:
            raise ForbiddenError("only the operator may do this")

    def check_policy_tenant(self, tenant: str) -> None:
        """A policy is for a known tenant or for all (`*`): a typo must not silently apply to nobody."""
        if tenant != ALL_TENANTS and tenant not in self.tenants:
            raise TenantNotFoundError(
                f"unknown tenant {tenant!r}: a policy names a tenant an API key belongs to, or '*' for every tenant"
            )

    def check_policy_erasure(self, tenant: str, record: ErasureRecord) -> None:
        """A policy may name only erasures its tenants can see: the operator's (operator-wide), or for one tenant
        that tenant's own (never another tenant's: the response lists the erasures applied)."""
        if record.tenant == self.operator or (tenant != ALL_TENANTS and record.tenant == tenant):
            return
        raise InvalidRequestError(
            f"erasure {record.id} belongs to another tenant; a policy for {tenant!r} may name operator-wide "
            "erasures or that tenant's own"
        )

    def authenticate(self, api_key: str | None) -> Principal:
        """The caller of a request carrying `api_key` (None when absent). Raises UnauthorizedError."""
        if not self.settings.auth_enabled:
            return self._principal(self.settings.default_tenant)
        if not api_key:
            raise UnauthorizedError("an API key is required: send 'Authorization: Bearer <key>'")
        presented = hashlib.sha256(api_key.encode()).digest()
        tenant = None
        for digest, owner in self._keys:  # compare against every key in constant time
            if hmac.compare_digest(digest, presented):
                tenant = owner
        if tenant is None:
            raise UnauthorizedError("invalid API key")
        return self._principal(tenant)

    def _principal(self, tenant: str) -> Principal:
        return Principal(tenant=tenant, is_operator=tenant == self.operator)

    def can_see(self, principal: Principal, record: ErasureRecord) -> bool:
        return principal.is_operator or record.tenant in (principal.tenant, self.operator)

    def check_delete(self, principal: Principal, record: ErasureRecord) -> None:
        """Raises ForbiddenError when a tenant tries to delete an operator-wide erasure, and ErasureInPolicyError
        when the mandatory policy names the erasure (deleting it would make every generation of those tenants
        fail)."""
        if not (principal.is_operator or record.tenant == principal.tenant):
            raise ForbiddenError(f"erasure {record.id} is operator-wide; only the operator can delete it")
        named_by = self.policy.naming(record.id)
        if named_by:
            raise ErasureInPolicyError(
                f"erasure {record.id} is mandatory for {len(named_by)} tenant(s) (the operator's policy); "
                "remove it from the policy before deleting it"
            )

    def mandatory(self, principal: Principal) -> list[str]:
        """Erasure ids the operator's policy applies to every generation of this tenant."""
        return self.policy.mandatory(principal.tenant)


def _digest(key: str) -> bytes:
    """The SHA-256 digest of a configured key: given as `sha256:<hex>`, or computed from the key itself."""
    if key.startswith(HASHED_KEY_PREFIX):
        return bytes.fromhex(key[len(HASHED_KEY_PREFIX) :])
    return hashlib.sha256(key.encode()).digest()
