"""The `erasure` program: the core's `generate` / `erase`, plus `serve` (the HTTP service) and `worker` (a job
worker on the Redis queue)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from erasure_core.cli import build_parser as build_core_parser
from erasure_core.cli import run
from service.settings import Settings, get_settings

logger = logging.getLogger("erasure")


def _settings() -> Settings | None:
    """The settings, or None after logging why they are invalid (the process then exits 2 without starting)."""
    try:
        return get_settings()
    except ValidationError as e:
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        logger.error("invalid settings (ERASURE_* variables): %s", problems)
        return None


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.main import run_server

    if _settings() is None:
        return 2
    run_server(host=args.host, port=args.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from service.jobs.worker import check_worker, run_worker

    settings = _settings()
    if settings is None:
        return 2
    if args.check:
        problem = check_worker(settings)
        if problem is not None:
            logger.error("unhealthy: %s", problem)
            return 1
        logger.info("healthy")
        return 0
    processed = run_worker(settings, burst=args.burst)
    logger.info("worker stopped (%s)", "jobs processed" if processed else "no jobs processed")
    return 0


def add_service_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (needs ERASURE_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if Redis answers and a worker of this host is registered, else 1",
    )
    worker.set_defaults(func=_cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    return build_core_parser(add_service_commands)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
