"""One asyncio worker per pipeline: a bounded queue of generation requests, grouped by erasure set.

The worker takes the oldest pending request whose erasure set equals the active one, so a run of requests with the
same set swaps once. The active set keeps the worker for at most `max_skips` requests while an older request of
another set waits; then the worker turns to the oldest request's set (bounded unfairness, like Ray Serve's
multiplexing timeout). The bound is per turn, not per request: counted per request, every request near the head of
a full queue runs out of skips at once and the worker falls back to arrival order, swapping on nearly every request
(queues of 72 requests over 8 sets swapped 26-42 times; by turns, 9-12).

Requests are never batched together: each runs alone with exactly its own set, so its image bytes are the same
whether it runs alone or among many. A full queue refuses new requests at once (`OverloadedError`, HTTP 429) rather
than letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from erasure_core.adapters import ErasureSet
from erasure_core.engines import GenerationParams
from service.errors import OverloadedError
from service.metrics import Metrics
from service.runtime.adapter_manager import AdapterManager

logger = logging.getLogger(__name__)


def next_turn(sets: Sequence[ErasureSet], active: ErasureSet, ahead: int, max_skips: int) -> tuple[int, int]:
    """Which pending request runs next, in arrival order `sets`, and how many requests the active set will then have
    run ahead of an older one: (index, ahead).

    The oldest request of the active set runs while the set has run fewer than `max_skips` requests ahead of an older
    request; otherwise the oldest request runs and its set's turn begins."""
    if ahead < max_skips:
        index = next((i for i, key in enumerate(sets) if key == active), None)
        if index is not None:
            return index, ahead + (index > 0)
    return 0, 0


@dataclass
class GenerationJob:
    """One request: `n` images (or clips: `params` a `VideoParams`) of one prompt with consecutive seeds, under one
    erasure set."""

    erasures: ErasureSet
    prompts: list[str]
    seeds: list[int]
    params: GenerationParams
    future: asyncio.Future[torch.Tensor] | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)


class GenerationScheduler:
    """Runs the generation requests of one pipeline, one at a time, in a worker thread."""

    def __init__(self, manager: AdapterManager, metrics: Metrics, max_queue: int, max_skips: int) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_skips = max_skips
        self._pending: list[GenerationJob] = []
        self._ahead = 0  # requests the active set ran ahead of an older request (see next_turn)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics.queue_depth.set_function(lambda: len(self._pending), model=manager.handle.name)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"scheduler-{self.model}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for job in self._pending:
            if job.future is not None and not job.future.done():
                job.future.cancel()
        self._pending.clear()

    @property
    def model(self) -> str:
        return self.manager.handle.name

    async def submit(
        self,
        erasures: ErasureSet,
        prompts: list[str],
        seeds: list[int],
        params: GenerationParams,
        on_drop: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Queues one request and waits for its images [N, 3, H, W] (clips [N, F, 3, H, W] from a video engine).

        Raises OverloadedError when the queue is full. Cancelling the wait before the request started drops it
        (it never runs) and calls `on_drop` (the caller's quota charge is given back)."""
        if len(self._pending) >= self.max_queue:
            self.metrics.rejected.inc(model=self.model)
            raise OverloadedError(f"the {self.model} queue is full ({self.max_queue} requests waiting); retry later")
        job = GenerationJob(erasures, prompts, seeds, params)
        job.future = asyncio.get_running_loop().create_future()
        self._pending.append(job)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The caller went away (its client disconnected): work not started yet is dropped and frees its slot
            # now; work already running finishes (a run cannot be interrupted) and its result is discarded.
            if job in self._pending:
                self._pending.remove(job)
                self.metrics.dropped.inc(model=self.model)
                logger.info("dropped a queued %s request: its client went away", self.model)
                if on_drop is not None:
                    on_drop()
            raise

    def pick(self) -> GenerationJob:
        """Removes and returns the next job: the oldest with the active set, unless its turn is over (next_turn)."""
        sets = [job.erasures for job in self._pending]
        index, self._ahead = next_turn(sets, self.manager.active, self._ahead, self.max_skips)
        return self._pending.pop(index)

    async def _worker(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job = self.pick()
            if job.future is None or job.future.done():  # the caller went away
                continue
            try:
                images = await asyncio.to_thread(self._execute, job)
            except Exception as e:  # delivered to the waiting request, which maps it to HTTP
                if not job.future.done():
                    job.future.set_exception(e)
            else:
                if not job.future.done():
                    job.future.set_result(images)

    def _execute(self, job: GenerationJob) -> Any:
        started = time.perf_counter()
        with self.manager.use(job.erasures) as active:
            images = active.engine.generate_active(job.prompts, job.seeds, job.params)
        self.metrics.generations.inc(model=self.model)
        self.metrics.generation_seconds.observe(time.perf_counter() - started, model=self.model)
        return images
