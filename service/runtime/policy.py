"""The operator's mandatory-erasure policy: which erasures every generation of a tenant runs with.

Two sources, merged: `ERASURE_MANDATORY_ERASURES` (read-only, from the deployment) and entries the operator manages
through the API (`/v1/policies`), kept where the erasure store is, so every replica that shares the store shares the
policy and sees a change on its next request, without a restart:
- file store: one JSON file in the data folder, written to a temporary file, fsynced, then renamed (a crash leaves
  the old or the new policy, never half of one), re-read when its stamp changes;
- Redis store: one JSON value under `{prefix}policies`, changed in a WATCH/MULTI transaction, read on every access.
A policy that cannot be read is never taken for "no policy": the request fails (503 `policy_unavailable`).

The tenant `*` stands for every tenant. A policy's erasures are applied through their guards
(`erasure_core.methods.ice.guard`): on the text-conditioning layers they act after everything a tenant's own
erasures do, so a tenant cannot remap another concept onto one the policy removes (see README, "What the policy
guarantees").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import redis

from service.errors import InvalidRequestError, PolicyNotFoundError, PolicyUnavailableError
from service.settings import Settings

logger = logging.getLogger(__name__)

ALL_TENANTS = "*"
POLICY_FILE = "policies.json"
Source = Literal["settings", "api"]


@dataclass(frozen=True)
class PolicyEntry:
    """The erasures one source makes mandatory for one tenant (`*`: every tenant)."""

    tenant: str
    erasures: tuple[str, ...]
    source: Source


Managed = dict[str, tuple[str, ...]]  # tenant -> erasure ids, as set through the API


class PolicyStorage(Protocol):
    def read(self) -> Managed: ...

    def change(self, edit: Callable[[Managed], Managed]) -> Managed:
        """Applies `edit` to the current entries atomically and returns what was stored."""
        ...


def _decode(text: str | bytes) -> Managed:
    data = json.loads(text)
    return {str(t): tuple(str(i) for i in ids) for t, ids in data["tenants"].items()}


def _encode(managed: Managed) -> str:
    return json.dumps({"version": 1, "tenants": {t: list(ids) for t, ids in sorted(managed.items())}}, indent=1)


class FilePolicies:
    """The API-managed policy as one file in the data folder (shared by replicas that share the folder)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / POLICY_FILE
        self._lock = threading.Lock()
        self._cached: Managed = {}
        self._stamp: tuple[int, int] | None = None

    def read(self) -> Managed:
        with self._lock:
            return self._read()

    def _read(self) -> Managed:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cached, self._stamp = {}, None
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._cached, self._stamp = _decode(self.path.read_text()), stamp
        return dict(self._cached)

    def change(self, edit: Callable[[Managed], Managed]) -> Managed:
        with self._lock:  # one writer per process; replicas writing the same file at once: the last rename wins
            managed = edit(self._read())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{POLICY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "w") as f:
                f.write(_encode(managed))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._stamp = None  # re-read (and re-stamp) on the next access
            return managed


class RedisPolicies:
    """The API-managed policy as one JSON value in Redis (shared by every replica of a Redis-backed store)."""

    def __init__(self, conn: redis.Redis, prefix: str) -> None:
        self.conn = conn
        self.key = f"{prefix}policies"

    def read(self) -> Managed:
        raw = self.conn.get(self.key)
        return {} if raw is None else _decode(raw)

    def change(self, edit: Callable[[Managed], Managed]) -> Managed:
        while True:
            with self.conn.pipeline() as pipe:
                try:
                    pipe.watch(self.key)
                    raw = pipe.get(self.key)
                    managed = edit({} if raw is None else _decode(raw))
                    pipe.multi()
                    pipe.set(self.key, _encode(managed))
                    pipe.execute()
                    return managed
                except redis.WatchError:
                    continue  # another replica changed it meanwhile: edit its version


class PolicyBook:
    """The merged policy. Thread-safe; the API-managed part survives restarts and is shared through `storage`."""

    def __init__(self, settings: Settings, storage: PolicyStorage | None = None) -> None:
        self._settings = settings  # read on every access: the settings' part is whatever they hold now
        self._storage = storage or FilePolicies(settings.data_dir)

    # -- reading ---------------------------------------------------------------------------------------------------

    def entries(self) -> list[PolicyEntry]:
        managed = self._managed()
        fixed = [PolicyEntry(t, tuple(sorted(set(ids))), "settings") for t, ids in sorted(self._fixed.items())]
        return fixed + [PolicyEntry(t, ids, "api") for t, ids in sorted(managed.items())]

    def mandatory(self, tenant: str) -> list[str]:
        """Erasure ids applied to every generation of `tenant` (its own entries and the all-tenants ones)."""
        return sorted({i for e in self.entries() if e.tenant in (tenant, ALL_TENANTS) for i in e.erasures})

    def naming(self, erasure_id: str) -> list[str]:
        """Tenants whose policy names `erasure_id`."""
        return sorted({e.tenant for e in self.entries() if erasure_id in e.erasures})

    def erasure_ids(self) -> frozenset[str]:
        """Every erasure any policy names: these are applied through their guards wherever they are active."""
        return frozenset(i for e in self.entries() for i in e.erasures)

    @property
    def _fixed(self) -> dict[str, list[str]]:
        return self._settings.mandatory_erasures

    def _managed(self) -> Managed:
        try:
            return self._storage.read()
        except (OSError, ValueError, KeyError, TypeError, redis.RedisError) as e:
            logger.error("the policy cannot be read: %s", e)
            raise PolicyUnavailableError(f"the mandatory policy cannot be read ({type(e).__name__})") from e

    # -- operator changes ------------------------------------------------------------------------------------------

    def put(self, tenant: str, erasures: list[str]) -> PolicyEntry:
        """Sets the API-managed erasures of `tenant` (replacing what the API had set for it)."""
        if not erasures:
            raise InvalidRequestError("erasures must name at least one erasure; DELETE the policy to remove it")
        ids = tuple(sorted(set(erasures)))
        self._change(lambda managed: {**managed, tenant: ids})
        logger.warning("policy for tenant %s set to %s", tenant, ids)
        return PolicyEntry(tenant, ids, "api")

    def remove(self, tenant: str) -> None:
        """Removes the API-managed entry of `tenant`. Raises PolicyNotFoundError when there is none (entries from
        settings are read-only)."""

        def without(managed: Managed) -> Managed:
            if tenant not in managed:
                fixed = " (its entry from ERASURE_MANDATORY_ERASURES is read-only)" if tenant in self._fixed else ""
                raise PolicyNotFoundError(f"no API-managed policy for tenant {tenant!r}{fixed}")
            return {t: ids for t, ids in managed.items() if t != tenant}

        self._change(without)
        logger.warning("policy for tenant %s removed", tenant)

    def _change(self, edit: Callable[[Managed], Managed]) -> None:
        try:
            self._storage.change(edit)
        except (OSError, ValueError, KeyError, TypeError, redis.RedisError) as e:
            logger.error("the policy cannot be changed: %s", e)
            raise PolicyUnavailableError(f"the mandatory policy cannot be changed ({type(e).__name__})") from e


def policy_storage(settings: Settings) -> PolicyStorage:
    """Where the API-managed policy lives: beside the erasure store (`ERASURE_STORE`)."""
    if settings.store == "redis":
        from service.jobs.redis_queue import connect

        return RedisPolicies(connect(settings), settings.queue_prefix)
    return FilePolicies(settings.data_dir)
