"""`erasure worker`: executes queued erasure jobs from Redis (rq `SimpleWorker`, one job at a time).

The worker loads the configured pipelines once (the same `ERASURE_*` settings as the API, and the same
`ERASURE_DATA_DIR`, which must be shared with the API: records, checkpoints and artifacts live there), then runs jobs
in its own process so the loaded model (and its CUDA context) is reused by every job. Each running job holds a lease
in Redis that a background thread renews; if the worker dies, the lease lapses and a reaper (in every worker and in
the API) re-queues the job, which resumes from its last checkpoint on the next worker.

The worker runs only the project's job function (`JOB_FUNCTION`, one erasure id, nothing else): rq would import and
call whatever a job in Redis names, so any other job is failed without importing, calling or contacting anything it
names (function, callbacks, webhooks). `erasure worker --check` is the container's health check.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from service.jobs.execution import JobExecutor, Outcome
from service.jobs.redis_queue import JOB_FUNCTION, Keys, Lease, Reaper, connect, reap
from service.metrics import Metrics
from service.pipelines import PipelinePool
from service.settings import Settings, get_settings
from service.store import is_valid_id
from service.store_redis import open_store
from service.store_reports import is_valid_report_id

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
                try:
                    self.conn.srem(self.keys.active, erasure_id)
                except redis.RedisError as e:  # the reaper forgets it on its next pass
                    logger.warning("could not untrack %s (%s)", erasure_id, e)
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
    store = open_store(settings)
    store.ensure_dirs()
    executor = JobExecutor(pool, store, Metrics(), exclusive_pipeline=False)
    return WorkerContext(settings, connect(settings), executor)


def perform(erasure_id: str) -> str:
    """The rq job function (`service.jobs.worker.perform`): runs one erasure job in this worker."""
    global _context
    if not isinstance(erasure_id, str) or not (is_valid_id(erasure_id) or is_valid_report_id(erasure_id)):
        raise ValueError(f"not an erasure id: {erasure_id!r}")
    if _context is None:  # run by a plain `rq worker` rather than `erasure worker`: load on first use
        _context = build_context(get_settings())
    return _context.run(erasure_id)


def refusal(job: Job) -> str | None:
    """Why this worker must not run `job` (None: it is one of ours). Reads only the job's stored data: nothing it
    names is imported."""
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception as e:  # noqa: BLE001 - undecodable payload
        return f"undecodable job payload ({type(e).__name__})"
    if func_name != JOB_FUNCTION or instance is not None:
        return f"job function {func_name!r} is not {JOB_FUNCTION!r}"
    if kwargs or len(args) != 1 or not isinstance(args[0], str):
        return "the job's arguments are not one erasure id"
    if not (is_valid_id(args[0]) or is_valid_report_id(args[0])):
        return "the job's arguments are not one erasure id"
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(callbacks) or job.webhooks:
        return "the job names callbacks or webhooks"
    return None


class ErasureWorker(SimpleWorker):
    """rq's in-process worker, restricted to the project's job function."""

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        reason = refusal(job)
        if reason is None:
            return bool(super().perform_job(job, queue, execution))
        logger.error("refusing rq job %s from queue %s: %s", job.id, queue.name, reason)
        job.retries_left = None  # no retries, and nothing the job names is contacted when it fails
        job.webhooks = []
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        self.handle_job_failure(
            job,
            queue,
            started_job_registry=queue.started_job_registry,
            exc_string=f"refused: {reason}",
            execution=execution,
        )
        return False


def worker_name_prefix() -> str:
    return f"erasure-{socket.gethostname()}-"


def check_worker(settings: Settings) -> str | None:
    """The health check of `erasure worker` (`erasure worker --check`): None when Redis answers (with the configured
    URL and password) and a worker of this host is registered on this deployment's queues (rq drops a worker
    whose heartbeat lapsed); otherwise what is wrong."""
    if not settings.redis_url:
        return "ERASURE_REDIS_URL is not set"
    conn = connect(settings)
    try:
        conn.ping()
        for worker in Worker.all(connection=conn, serializer=JSONSerializer):
            ours = any(q.startswith(settings.queue_prefix) for q in worker.queue_names())
            if worker.name.startswith(worker_name_prefix()) and ours:
                return None
    except redis.RedisError as e:
        return f"Redis is unreachable: {e}"
    finally:
        conn.close()
    return f"no worker of this host ({socket.gethostname()}) is registered on the {settings.queue_prefix}* queues"


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
    worker_name = name or f"{worker_name_prefix()}{os.getpid()}-{secrets.token_hex(3)}"
    worker = ErasureWorker(queues, connection=conn, name=worker_name, serializer=JSONSerializer)
    logger.info("worker %s serving queues %s", worker_name, [q.name for q in queues])
    try:
        return bool(worker.work(burst=burst, logging_level=settings.log_level.upper()))
    finally:
        reaper.stop()
