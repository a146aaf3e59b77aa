"""Work that stops when its client goes away: a generation whose caller disconnected is not worth running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")

POLL_S = 0.2
CLIENT_CLOSED = 499  # the status nginx logs for "client closed request"; nobody receives it


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Runs `work`, cancelling it if the client disconnects first (a queued generation is then dropped).

    Raises ClientDisconnected after cancelling.
    """
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientDisconnected()
