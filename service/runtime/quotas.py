"""Per-tenant quotas: generation cost per request and per rolling window, concurrent jobs, stored erasures and bytes.

One key must not be able to fill the shared queue or the store. Limits come from settings (`ERASURE_QUOTA_*`), with
per-tenant overrides (`ERASURE_TENANT_QUOTAS`); the operator tenant is exempt; 0 turns a limit off. A request over
a limit is refused before anything is queued, charged or written: 429 `quota_exceeded` with `Retry-After` (when the
window admits it again; for counts that free up only when something finishes or is deleted, a fixed short wait).
A request bigger than a whole window's budget could never be admitted, so that one is a 422, not a 429.

Generation cost is in megapixel-steps: width x height x steps x images (or frames) / 1e6.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from service.errors import InvalidRequestError, QuotaExceededError
from service.runtime.tenancy import Principal
from service.settings import Settings
from service.store import ErasureStore

COUNT_RETRY_S = 30  # jobs finish, erasures get deleted: a client polls again after this


@dataclass(frozen=True)
class QuotaLimits:
    cost_per_window: float
    max_request_cost: float
    max_jobs: int
    max_erasures: int
    max_bytes: int


def generation_cost(width: int, height: int, steps: int, count: int) -> float:
    """Megapixel-steps of one request: `count` images, or the frames of one clip."""
    return width * height * steps * count / 1e6


class Quotas:
    """Thread-safe accounting of what each tenant uses."""

    def __init__(self, settings: Settings, store: ErasureStore) -> None:
        self.settings = settings
        self.store = store
        self.window_s = settings.quota_window_s
        self._defaults = QuotaLimits(
            cost_per_window=settings.quota_cost_per_window,
            max_request_cost=settings.quota_max_request_cost,
            max_jobs=settings.quota_max_jobs,
            max_erasures=settings.quota_max_erasures,
            max_bytes=settings.quota_max_bytes,
        )
        self._spent: dict[str, deque[tuple[float, float]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def limits(self, tenant: str) -> QuotaLimits:
        given = self.settings.tenant_quotas.get(tenant, {})
        d = self._defaults
        return QuotaLimits(
            cost_per_window=float(given.get("cost_per_window", d.cost_per_window)),
            max_request_cost=float(given.get("max_request_cost", d.max_request_cost)),
            max_jobs=int(given.get("max_jobs", d.max_jobs)),
            max_erasures=int(given.get("max_erasures", d.max_erasures)),
            max_bytes=int(given.get("max_bytes", d.max_bytes)),
        )

    def charge_generation(self, principal: Principal, cost: float) -> None:
        """Charges a generation to its tenant, or raises (422 over the per-request limit, 429 over the window)."""
        if principal.is_operator:
            return
        limits = self.limits(principal.tenant)
        if limits.max_request_cost and cost > limits.max_request_cost:
            raise InvalidRequestError(
                f"this request costs {cost:.1f} megapixel-steps (width x height x steps x images or frames / 1e6); "
                f"the limit per request is {limits.max_request_cost:g}"
            )
        if not limits.cost_per_window:
            return
        now = time.monotonic()
        with self._lock:
            spent = self._spent[principal.tenant]
            while spent and spent[0][0] <= now - self.window_s:
                spent.popleft()
            total = sum(c for _, c in spent)
            if total + cost > limits.cost_per_window:
                raise QuotaExceededError(
                    f"tenant {principal.tenant!r} used {total:.1f} of {limits.cost_per_window:g} megapixel-steps "
                    f"in the last {self.window_s:g} s; this request needs {cost:.1f}",
                    retry_after=self._wait(spent, total + cost - limits.cost_per_window, now),
                )
            spent.append((now, cost))

    def _wait(self, spent: deque[tuple[float, float]], excess: float, now: float) -> int:
        """Seconds until enough of the window's spending has expired to admit `excess` more."""
        freed = 0.0
        for at, cost in spent:
            freed += cost
            if freed >= excess:
                return math.ceil(at + self.window_s - now)
        return math.ceil(self.window_s)

    def check_new_erasure(self, principal: Principal, trained: bool) -> None:
        """Raises QuotaExceededError when the tenant may not store (or, for a trained method, queue) another."""
        if principal.is_operator:
            return
        limits = self.limits(principal.tenant)
        own = [r for r in self.store.list() if r.tenant == principal.tenant]
        if limits.max_erasures and len(own) >= limits.max_erasures:
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} stores {len(own)} erasures, its limit; delete some first",
                retry_after=COUNT_RETRY_S,
            )
        stored = sum(r.artifact_bytes or 0 for r in own)
        if limits.max_bytes and stored >= limits.max_bytes:
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} stores {stored} bytes of erasures, its limit is {limits.max_bytes}",
                retry_after=COUNT_RETRY_S,
            )
        active = sum(not r.status.terminal for r in own)
        if trained and limits.max_jobs and active >= limits.max_jobs:
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} has {active} erasure jobs queued or running, its limit",
                retry_after=COUNT_RETRY_S,
            )
