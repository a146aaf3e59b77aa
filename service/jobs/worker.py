"""`erasure worker`: executes queued erasure jobs from Redis (rq `SimpleWorker`, one job at a time).

The worker loads the configured pipelines once (the same `ERASURE_*` settings as the API, and the same
`ERASURE_DATA_DIR`, which must be shared with the API: records, checkpoints and artifacts live there), then runs jobs
in its own process so the loaded model (and its CUDA context) is reused by every job. Each running job holds a lease
in Redis that a background thread renews; if the worker dies, the lease lapses and a reaper (in every worker and in
the API) re-queues the job, which resumes from its last checkpoint on the next worker.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from service.jobs.execution import JobExecutor, Outcome
from service.jobs.redis_queue import Keys, Lease, Reaper, connect, reap
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.settings import Settings, get_settings
from service.store import ErasureStore

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a job needs in a worker process: settings, a Redis client and the executor over the loaded pipelines."""

    settings: Settings
    conn: redis.Redis
    executor: JobExecutor

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.queue_prefix)

    def run(self, erasure_id: str) -> str:
        lease = Lease(self.conn, self.keys.lease(erasure_id), self.settings.job_lease_s)
        if not lease.acquire():
            logger.info("erasure %s is already running on another worker; skipping this copy", erasure_id)
            return Outcome.skipped.value
        try:
            with lease.kept_alive():
                outcome = self.executor.execute(erasure_id, lambda: self._should_stop(erasure_id, lease))
        finally:
            lease.release()
        if outcome != Outcome.abandoned:
            record = self.executor.store.find(erasure_id)
            if record is None or record.status.terminal:
                self.conn.srem(self.keys.active, erasure_id)
        logger.info("erasure %s: %s", erasure_id, outcome.value)
        return outcome.value

    def _should_stop(self, erasure_id: str, lease: Lease) -> Outcome | None:
        if lease.lost:
            return Outcome.abandoned
        try:
            return Outcome.cancelled if self.conn.exists(self.keys.cancel(erasure_id)) else None
        except redis.RedisError:
            return None  # Redis briefly away: go on (a cancellation also shows in the record)


_context: WorkerContext | None = None


def build_context(settings: Settings) -> WorkerContext:
    """Loads the pipelines and opens the store and Redis: once per worker process."""
    pool = PipelinePool.load(settings)
    store = ErasureStore(settings.data_dir)
    store.ensure_dirs()
    executor = JobExecutor(pool, store, Metrics(), exclusive_pipeline=False)
    return WorkerContext(settings, connect(settings), executor)


def perform(erasure_id: str) -> str:
    """The rq job function (`service.jobs.worker.perform`): runs one erasure job in this worker."""
    global _context
    if _context is None:  # run by a plain `rq worker` rather than `erasure worker`: load on first use
        _context = build_context(get_settings())
    return _context.run(erasure_id)


def run_worker(settings: Settings | None = None, burst: bool = False, name: str | None = None) -> bool:
    """Runs a worker on the queues of every configured model until stopped (or, with `burst`, until they are
    empty). Returns whether any job was processed."""
    global _context
    settings = settings or get_settings()
    if not settings.redis_url:
        raise SystemExit("erasure worker needs ERASURE_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    _context = build_context(settings)
    conn = connect(settings, blocking=True)
    models = _context.executor.pool.names
    keys = Keys(settings.queue_prefix)
    queues = [Queue(keys.queue(m), connection=conn, serializer=JSONSerializer) for m in models]
    reap(_context.conn, _context.executor.store, settings)  # jobs of workers that died while none was running
    reaper = Reaper(_context.conn, _context.executor.store, settings).start()
    worker_name = name or f"erasure-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    worker = SimpleWorker(queues, connection=conn, name=worker_name, serializer=JSONSerializer)
    logger.info("worker %s serving queues %s", worker_name, [q.name for q in queues])
    try:
        return bool(worker.work(burst=burst, logging_level=settings.log_level.upper()))
    finally:
        reaper.stop()
