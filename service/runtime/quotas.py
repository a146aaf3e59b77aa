"""Per-tenant quotas: generation cost per request and per rolling window, concurrent jobs, stored erasures and bytes.

One key must not be able to fill the shared queue or the store. Limits come from settings (`ERASURE_QUOTA_*`), with
per-tenant overrides (`ERASURE_TENANT_QUOTAS`); the operator tenant is exempt; 0 turns a limit off. A request over
a limit is refused before anything is queued, charged or written: 429 `quota_exceeded` with `Retry-After` (when the
window admits it again; for counts that free up only when something finishes or is deleted, a fixed short wait).
A request that no window could ever admit (over the per-request limit, or over the whole window's budget) is a 422
`invalid_request`: waiting cannot help, so a 429 would send the client into a retry loop.

Generation cost is in megapixel-steps: width x height x steps x images (or frames) / 1e6.

The rolling window lives in Redis when `ERASURE_REDIS_URL` is set, so that API replicas share one budget per tenant
(one atomic script: drop expired charges, sum, admit or refuse, record); otherwise, or while Redis does not answer,
in this process (generation keeps working without Redis, as everywhere else in the service).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol

import redis

from service.errors import InvalidRequestError, QuotaExceededError
from service.jobs.redis_queue import connect
from service.metrics import Metrics
from service.runtime.tenancy import Principal
from service.settings import Settings
from service.store import ErasureStore

logger = logging.getLogger(__name__)

COUNT_RETRY_S = 30  # jobs finish, erasures get deleted: a client polls again after this
REDIS_RETRY_S = 5.0  # after Redis failed to answer, count locally this long before asking it again


@dataclass(frozen=True)
class QuotaLimits:
    cost_per_window: float
    max_request_cost: float
    max_jobs: int
    max_erasures: int
    max_bytes: int


@dataclass(frozen=True)
class Charge:
    """What one admitted generation spent; `Quotas.refund` gives it back if the work never ran."""

    tenant: str
    token: str
    cost: float
    shared: bool  # recorded in Redis (else in this process)


def generation_cost(width: int, height: int, steps: int, count: int) -> float:
    """Megapixel-steps of one request: `count` images, or the frames of one clip."""
    return width * height * steps * count / 1e6


class Window(Protocol):
    def charge(self, tenant: str, token: str, cost: float, limit: float) -> float | None:
        """Records the charge and returns None, or returns the seconds until the window would admit it."""

    def refund(self, tenant: str, token: str, cost: float) -> None: ...


class LocalWindow:
    """A sliding window per tenant in this process."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._spent: dict[str, deque[tuple[float, str, float]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def charge(self, tenant: str, token: str, cost: float, limit: float) -> float | None:
        now = time.monotonic()
        with self._lock:
            spent = self._spent[tenant]
            while spent and spent[0][0] <= now - self.window_s:
                spent.popleft()
            total = sum(c for _, _, c in spent)
            if total + cost <= limit:
                spent.append((now, token, cost))
                return None
            excess, freed = total + cost - limit, 0.0
            for at, _, c in spent:  # oldest first: when has enough expired?
                freed += c
                if freed >= excess:
                    return at + self.window_s - now
            return self.window_s

    def refund(self, tenant: str, token: str, cost: float) -> None:
        with self._lock:
            spent = self._spent[tenant]
            for entry in list(spent):
                if entry[1] == token:
                    spent.remove(entry)


# KEYS[1]: the tenant's sorted set of charges (member "token:cost", score = time in ms from Redis's own clock, so
# replicas with skewed clocks agree). ARGV: window ms, cost, limit, token. Returns -1 when admitted, else the ms until
# enough of the window expires.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total = 0
for i = 1, #entries, 2 do total = total + tonumber(string.match(entries[i], ':([^:]+)$')) end
if total + cost <= limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local excess, freed = total + cost - limit, 0
for i = 1, #entries, 2 do
  freed = freed + tonumber(string.match(entries[i], ':([^:]+)$'))
  if freed >= excess then return tonumber(entries[i + 1]) + window - now end
end
return window
"""


class RedisWindow:
    """The same sliding window, in Redis: one budget per tenant across every API replica."""

    def __init__(self, conn: redis.Redis, prefix: str, window_s: float) -> None:
        self.conn = conn
        self.prefix = prefix
        self.window_ms = max(1, round(window_s * 1000))
        self._script = conn.register_script(_CHARGE)

    def key(self, tenant: str) -> str:
        return f"{self.prefix}quota:{tenant}"

    def charge(self, tenant: str, token: str, cost: float, limit: float) -> float | None:
        wait_ms = int(self._script(keys=[self.key(tenant)], args=[self.window_ms, repr(cost), repr(limit), token]))
        return None if wait_ms < 0 else wait_ms / 1000

    def refund(self, tenant: str, token: str, cost: float) -> None:
        self.conn.zrem(self.key(tenant), f"{token}:{cost!r}")


class Quotas:
    """Thread-safe accounting of what each tenant uses."""

    def __init__(self, settings: Settings, store: ErasureStore, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.window_s = settings.quota_window_s
        self._defaults = QuotaLimits(
            cost_per_window=settings.quota_cost_per_window,
            max_request_cost=settings.quota_max_request_cost,
            max_jobs=settings.quota_max_jobs,
            max_erasures=settings.quota_max_erasures,
            max_bytes=settings.quota_max_bytes,
        )
        self.local = LocalWindow(self.window_s)
        self.shared = (
            RedisWindow(connect(settings), settings.queue_prefix, self.window_s) if settings.redis_url else None
        )
        self._redis_down = False
        self._redis_retry_at = 0.0  # a Redis that does not answer must not cost every request its timeout

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

    def charge_generation(self, principal: Principal, cost: float) -> Charge | None:
        """Charges a generation to its tenant (None: nothing to charge), or raises: 422 when no window could admit
        it, 429 `quota_exceeded` when this window cannot yet."""
        if principal.is_operator:
            return None
        limits = self.limits(principal.tenant)
        for name, limit in (("per request", limits.max_request_cost), ("per window", limits.cost_per_window)):
            if limit and cost > limit:
                raise InvalidRequestError(
                    f"this request costs {cost:.3g} megapixel-steps (width x height x steps x images or frames / 1e6); "
                    f"the limit {name} is {limit:g}: ask for fewer or smaller images, or fewer steps"
                )
        if not limits.cost_per_window:
            return None
        charge, wait = self._charge(principal.tenant, cost, limits.cost_per_window)
        if wait is not None:
            self._refused("cost_per_window")
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} is over its budget of {limits.cost_per_window:g} megapixel-steps per "
                f"{self.window_s:g} s; this request needs {cost:.3g}",
                retry_after=math.ceil(wait),
            )
        return charge

    def _charge(self, tenant: str, cost: float, limit: float) -> tuple[Charge, float | None]:
        token = secrets.token_hex(8)
        if self.shared is not None and time.monotonic() >= self._redis_retry_at:
            try:
                wait = self.shared.charge(tenant, token, cost, limit)
                self._redis_down = False
                return Charge(tenant, token, cost, shared=True), wait
            except redis.RedisError as e:
                if not self._redis_down:
                    logger.warning("quota window: Redis does not answer (%s); counting in this process", e)
                self._redis_down = True
                self._redis_retry_at = time.monotonic() + REDIS_RETRY_S
        return Charge(tenant, token, cost, shared=False), self.local.charge(tenant, token, cost, limit)

    def refund(self, charge: Charge | None) -> None:
        """Gives a charge back: its work never ran (refused by a full queue, or dropped when its client left)."""
        if charge is None:
            return
        window: Window = self.shared if charge.shared and self.shared is not None else self.local
        try:
            window.refund(charge.tenant, charge.token, charge.cost)
        except redis.RedisError as e:  # it expires with the window anyway
            logger.warning("quota window: could not refund a charge of tenant %r: %s", charge.tenant, e)

    def check_new_erasure(self, principal: Principal, trained: bool) -> None:
        """Raises QuotaExceededError when the tenant may not store (or, for a trained method, queue) another.

        The caller adds the record without awaiting anything after this check, so concurrent requests of one process
        cannot both take the last slot (the event loop runs one at a time)."""
        if principal.is_operator:
            return
        limits = self.limits(principal.tenant)
        own = [r for r in self.store.list() if r.tenant == principal.tenant]
        if limits.max_erasures and len(own) >= limits.max_erasures:
            self._refused("max_erasures")
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} stores {len(own)} erasures, its limit; delete some first",
                retry_after=COUNT_RETRY_S,
            )
        stored = sum(r.artifact_bytes or 0 for r in own)
        if limits.max_bytes and stored >= limits.max_bytes:
            self._refused("max_bytes")
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} stores {stored} bytes of erasures, its limit is {limits.max_bytes}",
                retry_after=COUNT_RETRY_S,
            )
        active = sum(not r.status.terminal for r in own)
        if trained and limits.max_jobs and active >= limits.max_jobs:
            self._refused("max_jobs")
            raise QuotaExceededError(
                f"tenant {principal.tenant!r} has {active} erasure jobs queued or running, its limit",
                retry_after=COUNT_RETRY_S,
            )

    def _refused(self, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.quota_refused.inc(limit=limit)
