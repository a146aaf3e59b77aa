"""The operator's mandatory-erasure policy: which erasures every generation of a tenant runs with.

Two sources, merged: `ERASURE_MANDATORY_ERASURES` (read-only, from the deployment) and entries the operator manages
through the API (`/v1/policies`), persisted as one JSON file in the data folder (written to a temporary file,
fsynced, then renamed, so a crash leaves the old or the new policy, never half of one). Every read checks the file's
stamp, so API replicas sharing the data folder see a change on their next request, without a restart.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import InvalidRequestError, PolicyNotFoundError
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


class PolicyBook:
    """The merged policy. Thread-safe; the API-managed part survives restarts and is shared through the folder."""

    def __init__(self, settings: Settings) -> None:
        self._fixed = {t: tuple(sorted(set(ids))) for t, ids in settings.mandatory_erasures.items()}
        self._path = Path(settings.data_dir) / POLICY_FILE
        self._lock = threading.Lock()
        self._managed: dict[str, tuple[str, ...]] = {}
        self._stamp: tuple[int, int] | None = None

    # -- reading ---------------------------------------------------------------------------------------------------

    def entries(self) -> list[PolicyEntry]:
        managed = self._current()
        fixed = [PolicyEntry(t, ids, "settings") for t, ids in sorted(self._fixed.items())]
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

    # -- operator changes ------------------------------------------------------------------------------------------

    def put(self, tenant: str, erasures: list[str]) -> PolicyEntry:
        """Sets the API-managed erasures of `tenant` (replacing what the API had set for it)."""
        if not erasures:
            raise InvalidRequestError("erasures must name at least one erasure; DELETE the policy to remove it")
        with self._lock:
            managed = dict(self._load())
            managed[tenant] = tuple(sorted(set(erasures)))
            self._save(managed)
        logger.warning("policy for tenant %s set to %s", tenant, managed[tenant])
        return PolicyEntry(tenant, managed[tenant], "api")

    def remove(self, tenant: str) -> None:
        """Removes the API-managed entry of `tenant`. Raises PolicyNotFoundError when there is none (entries from
        settings are read-only)."""
        with self._lock:
            managed = dict(self._load())
            if tenant not in managed:
                fixed = " (its entry from ERASURE_MANDATORY_ERASURES is read-only)" if tenant in self._fixed else ""
                raise PolicyNotFoundError(f"no API-managed policy for tenant {tenant!r}{fixed}")
            del managed[tenant]
            self._save(managed)
        logger.warning("policy for tenant %s removed", tenant)

    # -- the file --------------------------------------------------------------------------------------------------

    def _current(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return self._load()

    def _load(self) -> dict[str, tuple[str, ...]]:
        """The API-managed entries, re-read when the file changed (another replica, or a restart)."""
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._managed, self._stamp = {}, None
            return self._managed
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            # A policy that cannot be read must not silently become "no policy": fail loudly instead.
            data = json.loads(self._path.read_text())
            self._managed = {str(t): tuple(str(i) for i in ids) for t, ids in data["tenants"].items()}
            self._stamp = stamp
        return self._managed

    def _save(self, managed: dict[str, tuple[str, ...]]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{POLICY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        body = json.dumps({"version": 1, "tenants": {t: list(ids) for t, ids in sorted(managed.items())}}, indent=1)
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        self._stamp = None  # re-read (and re-stamp) on the next access
        self._managed = managed
