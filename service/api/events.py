"""`GET /v1/erasures/{erasure_id}/events`: server-sent events of a job's and its reports' progress.

Same auth and tenancy as the other erasure routes. Browsers' `EventSource` cannot send headers, so on this route only
the key may also come as `?api_key=` (compared like any key, in constant time; blanked in uvicorn's access log;
prefer the header where the client can send one: other proxies may log query strings). Left out of the OpenAPI
contract: OpenAPI cannot describe an event stream's messages, and a fuzzer reading a stream of a job that never
finishes would wait forever.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.deps import RuntimeDep
from service.runtime.events import EventStreams

router = APIRouter(prefix="/v1/erasures", tags=["erasures"])

# Proxies must pass events on as they come (nginx buffers responses unless told otherwise).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_bearer = HTTPBearer(auto_error=False)
_KEY_IN_QUERY = re.compile(r"(?<=[?&]api_key=)[^&\s]*")


class _RedactKeys(logging.Filter):
    """Blanks `api_key=` query values in uvicorn's access log lines (their path is the third argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str) and "api_key=" in args[2]:
            record.args = (*args[:2], _KEY_IN_QUERY.sub("***", args[2]), *args[3:])
        return True


def redact_keys_in_access_log() -> None:
    """Keeps keys given as `?api_key=` out of the access log (idempotent)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactKeys) for f in access.filters):
        access.addFilter(_RedactKeys())


@router.get("/{erasure_id}/events", include_in_schema=False)
async def erasure_events(
    erasure_id: str,
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Query(max_length=512)] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Events `erasure` (status, progress, step, losses, eta_s), `report` (a report's status and progress) and a
    final `end`; ids resume with `Last-Event-ID`."""
    principal = runtime.tenancy.authenticate(credentials.credentials if credentials else api_key)
    streams: EventStreams = request.app.state.events
    stream = streams.open(principal, erasure_id, last_event_id)
    return StreamingResponse(
        stream.run(request.is_disconnected), media_type="text/event-stream", headers=STREAM_HEADERS
    )
