"""The `erasure` program: the core's `generate` / `erase`, plus `serve` (the HTTP service) and `worker` (a job
worker on the Redis queue)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from erasure_core.cli import build_parser as build_core_parser
from erasure_core.cli import run

logger = logging.getLogger("erasure")


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.main import run_server

    run_server(host=args.host, port=args.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from service.jobs.worker import run_worker

    processed = run_worker(burst=args.burst)
    logger.info("worker stopped (%s)", "jobs processed" if processed else "no jobs processed")
    return 0


def add_service_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (needs ERASURE_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=_cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    return build_core_parser(add_service_commands)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
