"""The Redis-backed job queue: rq for queueing and dispatch, plus a lease per running job so no job is ever lost.

Why rq: jobs are few, long and GPU-bound; what they need from a queue is a durable list in Redis, a worker loop we
can run *in-process* (`SimpleWorker`: the worker loads the pipeline once and keeps CUDA, which does not survive the
fork other workers do per job), JSON job payloads (no pickle), and nothing else to operate. arq is asyncio-first
(training is blocking), dramatiq and celery bring brokers, result backends and prefetching we would have to turn
off. rq's own abandoned-job detection waits for the job timeout plus a minute, far too slow for hour-long
trainings, so each running job also holds a short lease that its worker renews; a reaper (run by every worker and
by the API) puts a job whose lease lapsed back on the queue, and it resumes from its checkpoint.

A lease alone cannot stop a worker that pauses (GC, SIGSTOP) or is cut off from Redis past its TTL, so:
- a worker counts its lease lost once it has gone a TTL without a successful renewal, and its job stops at the next
  step (`Lease.lost`); it never re-takes a lease it may have lost;
- every write a job makes is fenced by its attempt in the store (`service.store`), so whatever a stale worker still
  tries after another attempt took the job over (progress, checkpoint, outcome, artifact) is refused;
- the reaper's own writes are compare-and-sets on the attempt it read, so it never re-queues a job a worker has just
  started.
The reaper also reconciles the store with the queue (`reconcile`): an unfinished record Redis knows nothing about
(Redis lost its data, or the API stopped during inline work) is re-queued, or failed once out of attempts.

Keys, all under `ERASURE_QUEUE_PREFIX` (default `erasure-`; one prefix per deployment sharing a Redis):
`{prefix}{model}` (the rq queue of one model), `{prefix}lease:{id}` (the running worker's token, TTL `job_lease_s`),
`{prefix}cancel:{id}` (set by DELETE), `{prefix}active` (ids of unfinished jobs, for the reaper), `{prefix}rqjob:{id}`
(the erasure's latest rq job id), `{prefix}enqueued:{id}` (times enqueued), `{prefix}reap:{id}` (so that concurrent
reapers enqueue once).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from service.errors import ErasureNotFoundError, QueueUnavailableError
from service.jobs.execution import JobExecutor
from service.settings import Settings
from service.store import ErasureRecord, ErasureStore, ErrorInfo, JobStatus, RecordFinishedError, StaleAttemptError
from service.store_reports import ReportNotFound, is_valid_report_id, report_store_for

logger = logging.getLogger(__name__)

JOB_FUNCTION = "service.jobs.worker.perform"
_CANCEL_TTL_S = 7 * 86400
_WAITING = (RqStatus.QUEUED, RqStatus.DEFERRED, RqStatus.SCHEDULED)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Keys:
    """The Redis key names of one deployment (`ERASURE_QUEUE_PREFIX`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = f"{prefix}active"

    def queue(self, model: str) -> str:
        return f"{self.prefix}{model}"

    def lease(self, erasure_id: str) -> str:
        return f"{self.prefix}lease:{erasure_id}"

    def cancel(self, erasure_id: str) -> str:
        return f"{self.prefix}cancel:{erasure_id}"

    def rq_job(self, erasure_id: str) -> str:
        return f"{self.prefix}rqjob:{erasure_id}"

    def enqueued(self, erasure_id: str) -> str:
        return f"{self.prefix}enqueued:{erasure_id}"

    def reaping(self, erasure_id: str) -> str:
        return f"{self.prefix}reap:{erasure_id}"


def connect(settings: Settings, blocking: bool = False) -> redis.Redis:
    """A client for `ERASURE_REDIS_URL` (with `ERASURE_REDIS_PASSWORD[_FILE]` unless the URL has a password).
    `blocking` clients (rq's worker loop, which waits on BLPOP) get no socket
    timeout; the others fail fast so an API request never hangs on a dead Redis."""
    assert settings.redis_url
    timeout = None if blocking else settings.redis_timeout_s
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(
        settings.redis_url, password=password, socket_timeout=timeout, socket_connect_timeout=timeout
    )


class Lease:
    """A running job's claim: one owner at a time, lapses `ttl_s` after its worker stops renewing it."""

    def __init__(self, conn: redis.Redis, key: str, ttl_s: float) -> None:
        self.conn = conn
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._taken = False  # another owner holds it
        self._held_since: float | None = None  # monotonic time of the last successful take or renewal (sent at)

    @property
    def lost(self) -> bool:
        """True once another owner took the lease, or a whole TTL passed without a successful renewal (it has
        lapsed in Redis by then, so another worker may have it): the holder must stop."""
        if self._taken:
            return True
        return self._held_since is None or time.monotonic() - self._held_since >= self.ttl_ms / 1000

    def acquire(self) -> bool:
        sent = time.monotonic()  # Redis starts the TTL when it gets the command: never earlier than this
        if not self.conn.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._held_since = sent
        return True

    def renew(self) -> bool:
        """Extends the lease (re-taking it if Redis lost it while it was still ours and nobody else took it).
        False: it is no longer ours (another owner, or a TTL passed without renewal)."""
        if self.lost:
            return False
        sent = time.monotonic()
        if not self.conn.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            self._taken = True
            return False
        self._held_since = sent
        return True

    def release(self) -> None:
        try:
            self.conn.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as e:
            logger.warning("could not release %s (%s); it lapses by itself", self.key, e)

    @contextmanager
    def kept_alive(self) -> Iterator[Lease]:
        """Renews the lease every third of its TTL in a background thread while the block runs."""
        done = threading.Event()

        def renew_loop() -> None:
            while not done.wait(self.ttl_ms / 3000):
                try:
                    if not self.renew():
                        logger.warning("lease %s lost; its job stops at its next step", self.key)
                        return
                except redis.RedisError as e:  # keep trying while a TTL lasts: Redis may be briefly away
                    logger.warning("lease renewal of %s failed: %s", self.key, e)

        thread = threading.Thread(target=renew_loop, name=f"lease-{self.key}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()


def enqueue(conn: redis.Redis, settings: Settings, erasure_id: str, model: str) -> str:
    """Puts the erasure's job on its model's queue; returns the rq job id (`{erasure_id}-{n}`)."""
    keys = Keys(settings.queue_prefix)
    n = int(conn.incr(keys.enqueued(erasure_id)))
    job_id = f"{erasure_id}-{n}"
    conn.sadd(keys.active, erasure_id)
    queue = Queue(keys.queue(model), connection=conn, serializer=JSONSerializer)
    queue.enqueue_call(
        JOB_FUNCTION,
        args=(erasure_id,),
        job_id=job_id,
        timeout=settings.job_timeout_s,
        result_ttl=3600,
        failure_ttl=_CANCEL_TTL_S,
        description=f"erasure {erasure_id} (attempt {n})",
    )
    conn.set(keys.rq_job(erasure_id), job_id)
    return job_id


def _waiting_for_a_worker(conn: redis.Redis, keys: Keys, erasure_id: str, grace_s: float) -> bool:
    """True while the erasure's latest rq job is queued, or was taken by a worker moments ago (before its lease)."""
    job_id = conn.get(keys.rq_job(erasure_id))
    if job_id is None:
        return False
    try:
        job = Job.fetch(_text(job_id), connection=conn, serializer=JSONSerializer)
        status = job.get_status()
    except NoSuchJobError:
        return False
    if status in _WAITING:
        return True
    started = job.started_at.timestamp() if job.started_at else None
    return status == RqStatus.STARTED and started is not None and time.time() - started < grace_s


def reap(conn: redis.Redis, store: ErasureStore, settings: Settings) -> dict[str, int]:
    """One pass over unfinished jobs: a job whose worker died (lease lapsed) or that Redis lost goes back on the
    queue, or fails as `worker_lost` once it has been started `job_max_attempts` times. Then reconciles the store
    with the queue (`reconcile`)."""
    keys = Keys(settings.queue_prefix)
    counts = {"requeued": 0, "failed": 0, "forgotten": 0, "watched": 0}
    for raw in conn.smembers(keys.active):
        erasure_id = _text(raw)
        if is_valid_report_id(erasure_id):
            if (outcome := _reap_report(conn, store, settings, erasure_id)) is not None:
                counts[outcome] += 1
            continue
        record = store.find(erasure_id)
        if record is None or record.status.terminal:
            conn.srem(keys.active, erasure_id)
            counts["forgotten"] += 1
            continue
        if conn.exists(keys.lease(erasure_id)) or _waiting_for_a_worker(conn, keys, erasure_id, settings.job_lease_s):
            continue
        if not conn.set(keys.reaping(erasure_id), "1", nx=True, ex=max(1, int(settings.job_lease_s))):
            continue  # another reaper is on it
        counts[_requeue_or_fail(conn, store, settings, record, "its worker stopped")] += 1
    for key, n in reconcile(conn, store, settings).items():
        counts[key] += n
    if any(counts.values()):
        logger.info("reaper: %s", counts)
    return counts


def _reap_report(conn: redis.Redis, store: ErasureStore, settings: Settings, report_id: str) -> str | None:
    """A report job whose worker died goes back on the queue (it starts over; its job fails it once out of
    attempts); a finished or deleted one is untracked. None: it is alive (leased or waiting in rq)."""
    keys = Keys(settings.queue_prefix)
    reports = report_store_for(store)
    record = reports.find(report_id)
    if record is None or record.status.terminal:
        conn.srem(keys.active, report_id)
        return "forgotten"
    if conn.exists(keys.lease(report_id)) or _waiting_for_a_worker(conn, keys, report_id, settings.job_lease_s):
        return None
    if not conn.set(keys.reaping(report_id), "1", nx=True, ex=max(1, int(settings.job_lease_s))):
        return None
    try:
        reports.update(report_id, True, if_attempts=record.attempts, status=JobStatus.queued)
    except (RecordFinishedError, StaleAttemptError, ReportNotFound):
        return "forgotten"
    job_id = enqueue(conn, settings, report_id, record.model)
    logger.warning("report %s: its worker stopped; re-queued as %s", report_id, job_id)
    return "requeued"


def reconcile_grace_s(settings: Settings) -> float:
    """How old an unfinished record Redis does not know must be before `reconcile` acts on it: longer than the
    moment between writing a record and queueing it, and than an inline erasure computed while Redis was away."""
    return max(2 * settings.job_lease_s, 30.0)


def reconcile(
    conn: redis.Redis, store: ErasureStore, settings: Settings, grace_s: float | None = None
) -> dict[str, int]:
    """Unfinished records the queue does not track (not in `{prefix}active`): after Redis lost its data (FLUSHALL,
    a failover without persistence) or an API crash during inline work, nothing would ever finish them. One held by
    a live worker (its lease is back) or waiting in rq is tracked again; any other is re-queued while attempts
    remain, else failed (`job_lost`). Records younger than `grace_s` are left: they may be on their way."""
    keys = Keys(settings.queue_prefix)
    grace = reconcile_grace_s(settings) if grace_s is None else grace_s
    counts = {"requeued": 0, "failed": 0, "forgotten": 0, "watched": 0}
    tracked = {_text(m) for m in conn.smembers(keys.active)}
    now = time.time()
    for record in store.list():
        if record.status.terminal or record.id in tracked:
            continue
        if now - max(record.created_at, record.started_at or 0.0) < grace:
            continue
        if conn.exists(keys.lease(record.id)) or _waiting_for_a_worker(conn, keys, record.id, settings.job_lease_s):
            conn.sadd(keys.active, record.id)
            counts["watched"] += 1
            continue
        if not conn.set(keys.reaping(record.id), "1", nx=True, ex=max(1, int(settings.job_lease_s))):
            continue
        counts[_requeue_or_fail(conn, store, settings, record, "the job queue lost it")] += 1
    return counts


def _requeue_or_fail(
    conn: redis.Redis, store: ErasureStore, settings: Settings, record: ErasureRecord, why: str
) -> str:
    """Re-queues the job or fails it; each a compare-and-set on the attempt read, so a worker that started the
    job meanwhile keeps it."""
    try:
        if record.attempts >= settings.job_max_attempts:
            code = "worker_lost" if why == "its worker stopped" else "job_lost"
            message = f"{why}, and it had been started {record.attempts} times without finishing"
            failure = ErrorInfo(code=code, message=message)
            store.update(
                record.id,
                require_active=True,
                if_attempts=record.attempts,
                status=JobStatus.failed,
                finished_at=time.time(),
                error=failure,
            )
            conn.srem(Keys(settings.queue_prefix).active, record.id)
            logger.error("erasure %s failed: %s", record.id, message)
            return "failed"
        store.update(record.id, require_active=True, if_attempts=record.attempts, status=JobStatus.queued, eta_s=None)
    except (RecordFinishedError, ErasureNotFoundError, StaleAttemptError):
        return "forgotten"
    job_id = enqueue(conn, settings, record.id, record.model)
    logger.warning("erasure %s: %s; re-queued as %s (resumes from its checkpoint)", record.id, why, job_id)
    return "requeued"


class Reaper:
    """Runs `reap` every `interval_s` in a daemon thread until stopped."""

    def __init__(self, conn: redis.Redis, store: ErasureStore, settings: Settings) -> None:
        self.conn, self.store, self.settings = conn, store, settings
        self.interval_s = max(0.5, min(settings.job_lease_s, 30.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="erasure-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reap(self.conn, self.store, self.settings)
            except (redis.RedisError, OSError) as e:
                logger.warning("reaper pass failed: %s", e)


class RedisRunner:
    """The API side of the queue: inline jobs run here; queued ones go to Redis for `erasure worker`s."""

    def __init__(self, settings: Settings, executor: JobExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.store = executor.store
        self.conn = connect(settings)
        self.reaper: Reaper | None = None

    def check_available(self) -> None:
        try:
            self.conn.ping()
        except redis.RedisError as e:
            raise QueueUnavailableError(f"the job queue (Redis) is unreachable: {e}") from e

    def run_inline(self, erasure_id: str) -> ErasureRecord:
        """Runs a closed-form job here, holding its lease while Redis answers: the reaper then tells a job this
        process is computing from one a crashed API left `running` (which it re-queues)."""
        lease = Lease(self.conn, Keys(self.settings.queue_prefix).lease(erasure_id), self.settings.job_lease_s)
        try:
            held = lease.acquire()
        except redis.RedisError as e:  # ICE keeps working while Redis is away
            logger.warning("erasure %s runs without a lease (Redis: %s)", erasure_id, e)
            held = False
        try:
            with lease.kept_alive() if held else nullcontext():
                self.executor.execute(erasure_id, raise_errors=True)
        finally:
            if held:
                lease.release()
        return self.store.get(erasure_id)

    def submit(self, erasure_id: str) -> None:
        model = self.executor.job_model(erasure_id)  # an erasure's model, or a report's erasure's
        try:
            job_id = enqueue(self.conn, self.settings, erasure_id, model)
        except redis.RedisError as e:
            raise QueueUnavailableError(f"could not queue the job (Redis): {e}") from e
        logger.info("erasure %s queued as rq job %s", erasure_id, job_id)

    def cancel(self, erasure_id: str) -> None:
        """Flags the job for its worker, which stops at its next step. The record's `cancelled` status (written by
        the caller) stops it too, so cancelling works even while Redis is away."""
        try:
            self.conn.set(Keys(self.settings.queue_prefix).cancel(erasure_id), "1", ex=_CANCEL_TTL_S)
        except redis.RedisError as e:
            logger.warning("could not flag %s cancelled in Redis (%s); the record's status stops it", erasure_id, e)

    def resume(self) -> int:
        """Reconciles the store with the queue once now, then starts the API's reaper: jobs of dead workers, and
        jobs Redis lost, go back on the queue (or fail) even when no worker is running. Returns how many were
        re-queued now."""
        requeued = 0
        try:
            requeued = reap(self.conn, self.store, self.settings)["requeued"]
        except (redis.RedisError, OSError) as e:
            logger.warning("startup reconcile with the queue failed (the reaper retries): %s", e)
        if self.reaper is None:
            self.reaper = Reaper(self.conn, self.store, self.settings).start()
        return requeued

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()
        self.conn.close()
