"""Server-sent events for one erasure: its job's progress and its reports' progress (no HTTP here).

Why the stream polls the store: every runner (the in-process thread, or `erasure worker` processes on the Redis
queue) already writes a job's progress (step, losses, ETA, status) into the erasure store at every step, and the
store is shared by every API replica whichever backend it uses (files or Redis). Reading the record every `poll_s`
therefore works the same everywhere, costs one record read per open stream per poll, and needs no change in the job
code; Redis pub/sub would only serve the Redis deployment and would still need a read of the current state for a
client that connects or resumes mid-job.

Progress is a state, not a log: a client needs the latest state, not every step it missed. An event is sent when a
source's state (the erasure, or one of its reports) differs from what this stream last sent. Event ids are
`<sequence>-<fingerprint>`, where the fingerprint identifies every state sent so far; a client that reconnects with
`Last-Event-ID` continues the sequence and is sent nothing when nothing changed since, otherwise the current states.
The stream ends with an `end` event once the job and every report are terminal (or the erasure was deleted), and
sends a comment line as heartbeat while nothing changes, so proxies and clients see the connection alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from service.errors import ErasureNotFoundError
from service.runtime.erasure_service import ErasureService
from service.runtime.tenancy import Principal
from service.schemas import ErasurePublic
from service.store import JobStatus
from service.store_reports import ReportRecord

logger = logging.getLogger(__name__)

# The reports of one erasure the caller may see, as the report service lists them (raises ErasureNotFoundError).
ReportLister = Callable[[Principal, str], list[ReportRecord]]
Disconnected = Callable[[], Awaitable[bool]]

TERMINAL = frozenset({"ready", "succeeded", "failed", "cancelled"})
ERASURE_FIELDS = ("id", "status", "progress", "step", "total_steps", "losses", "eta_s", "attempts", "error")
HEARTBEAT = ": heartbeat\n\n"
# Tells EventSource clients how long to wait before reconnecting after the connection drops (ms).
RETRY = "retry: 2000\n\n"


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    id: str
    event: str
    data: dict[str, Any]

    def encode(self) -> str:
        return f"id: {self.id}\nevent: {self.event}\ndata: {json.dumps(self.data, sort_keys=True)}\n\n"


def fingerprint(states: dict[str, dict[str, Any]]) -> str:
    """A short digest of every source's state, carried in event ids so a resumed stream knows what was seen."""
    return hashlib.sha256(json.dumps(states, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_last_event_id(value: str | None) -> tuple[int, str | None]:
    """`(sequence, fingerprint)` from a `Last-Event-ID` this service sent; `(0, None)` for anything else."""
    if not value:
        return 0, None
    sequence, _, digest = value.strip().partition("-")
    if not sequence.isdigit() or len(sequence) > 12 or len(digest) != 16:
        return 0, None
    return int(sequence), digest


def _erasure_state(public: ErasurePublic) -> dict[str, Any]:
    data = public.model_dump(mode="json")
    return {name: data.get(name) for name in ERASURE_FIELDS}


def _report_state(record: ReportRecord) -> dict[str, Any]:
    """What the report routes show of a running report (their `ready` for a finished one)."""
    status = "ready" if record.status == JobStatus.succeeded else record.status.value
    error = record.error.model_dump(mode="json") if record.error else None
    return {
        "id": record.id,
        "erasure_id": record.erasure_id,
        "status": status,
        "progress": record.progress,
        "error": error,
    }


class EventStreams:
    """Opens event streams and counts those open (a disconnected client must leave none behind)."""

    def __init__(
        self,
        erasures: ErasureService,
        operator: str,
        reports: ReportLister | None = None,
        poll_s: float = 0.5,
        heartbeat_s: float = 15.0,
    ) -> None:
        self.erasures = erasures
        self.operator = operator
        self.reports = reports
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self._live: set[ErasureEventStream] = set()

    @property
    def open_streams(self) -> int:
        """Streams whose client is still connected (a leak would show here)."""
        return len(self._live)

    def open(self, principal: Principal, erasure_id: str, last_event_id: str | None = None) -> ErasureEventStream:
        """A stream of `erasure_id`'s events; raises ErasureNotFoundError (404) before anything is streamed."""
        self.erasures.get(principal, erasure_id)
        return ErasureEventStream(self, principal, erasure_id, last_event_id)

    def read(self, principal: Principal, erasure_id: str) -> dict[str, dict[str, Any]] | None:
        """Every source's current state, keyed `erasure` and `report:<id>`; None once the erasure is gone."""
        try:
            record = self.erasures.get(principal, erasure_id)
            reports = self.reports(principal, erasure_id) if self.reports else []
        except ErasureNotFoundError:
            return None
        states = {"erasure": _erasure_state(ErasurePublic.from_record(record, self.operator))}
        states.update((f"report:{report.id}", _report_state(report)) for report in reports)
        return states


class ErasureEventStream:
    """One client's stream; iterate `run()` for the encoded text."""

    def __init__(self, streams: EventStreams, principal: Principal, erasure_id: str, last_event_id: str | None):
        self.streams = streams
        self.principal = principal
        self.erasure_id = erasure_id
        self.sequence, self.resume_from = parse_last_event_id(last_event_id)
        self.sent: dict[str, dict[str, Any]] = {}

    async def run(self, disconnected: Disconnected) -> AsyncIterator[str]:
        """Encoded events until the job and its reports are terminal, the erasure is deleted, or the client goes.

        The framework also cancels this generator when the client disconnects; either way `finally` runs."""
        self.streams._live.add(self)
        logger.debug("event stream for %s opened (%d open)", self.erasure_id, self.streams.open_streams)
        try:
            yield RETRY
            async for chunk in self._chunks(disconnected):
                yield chunk
        except Exception:
            logger.exception("event stream for %s failed", self.erasure_id)  # the client sees the stream cut
            raise
        finally:
            self.streams._live.discard(self)
            logger.debug("event stream for %s closed (%d open)", self.erasure_id, self.streams.open_streams)

    async def _chunks(self, disconnected: Disconnected) -> AsyncIterator[str]:
        quiet_since = time.monotonic()
        while not await disconnected():
            states = await asyncio.to_thread(self.streams.read, self.principal, self.erasure_id)
            if states is None:
                yield self._next("end", {"reason": "deleted"}).encode()
                return
            if self.resume_from is not None and fingerprint(states) == self.resume_from:
                self.sent = dict(states)  # the client saw exactly this before reconnecting: nothing to resend
            self.resume_from = None
            for event in self._changes(states):
                quiet_since = time.monotonic()
                yield event.encode()
            if all(state.get("status") in TERMINAL for state in states.values()):
                yield self._next("end", {"reason": "finished", "status": states["erasure"]["status"]}).encode()
                return
            if time.monotonic() - quiet_since >= self.streams.heartbeat_s:
                quiet_since = time.monotonic()
                yield HEARTBEAT
            await asyncio.sleep(self.streams.poll_s)

    def _changes(self, states: dict[str, dict[str, Any]]) -> list[Event]:
        events = []
        for key, state in states.items():
            if self.sent.get(key) == state:
                continue
            self.sent[key] = state
            events.append(self._next(key.partition(":")[0], state))
        return events

    def _next(self, name: str, data: dict[str, Any]) -> Event:
        self.sequence += 1
        return Event(id=f"{self.sequence}-{fingerprint(self.sent)}", event=name, data=data)
