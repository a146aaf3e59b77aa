"""Erasure jobs: the shared job body (`execution`), the runners (`runner`: embedded; `redis_queue`: rq on Redis) and
the `erasure worker` process (`worker`)."""

from service.jobs.execution import JobExecutor, Outcome
from service.jobs.runner import EmbeddedRunner, JobRunner, create_runner

__all__ = ["EmbeddedRunner", "JobExecutor", "JobRunner", "Outcome", "create_runner"]
