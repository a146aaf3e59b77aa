"""Erasure jobs: the runner interface and the embedded in-process runner (a Redis queue plugs in behind it)."""

from service.jobs.runner import EmbeddedRunner, JobRunner, Work, create_runner

__all__ = ["EmbeddedRunner", "JobRunner", "Work", "create_runner"]
