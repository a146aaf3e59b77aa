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


def _cmd_report(args: argparse.Namespace) -> int:
    """`erasure report ID|FILE`: an erasure of the local store (by id) or an `.erasure` file."""
    import json
    from pathlib import Path

    from erasure_core.artifacts import load_artifact
    from erasure_core.reports import ReportConfig, build_report, get_judge
    from service.store import is_valid_id

    try:  # the same ERASURE_* settings as the service, less auth: this command serves no one
        settings = Settings(auth="off", api_keys={}, api_keys_file=None)
    except ValidationError as e:
        logger.error("invalid settings (ERASURE_* variables): %s", e)
        return 2
    erasure_id, record = None, None
    if is_valid_id(args.target) and not Path(args.target).exists():
        from service.pipelines import PipelinePool
        from service.store_redis import open_store

        store = open_store(settings)
        record = store.get(args.target)
        artifact, erasure_id = store.load_artifact(args.target), record.id
        engine = PipelinePool.load(settings).get(record.model).engine
    else:
        from erasure_core.cli import _load

        artifact = load_artifact(args.target)
        engine = _load(args)
    judge_path = Path(args.judge_path) if args.judge_path else settings.report_judge_path
    judge = get_judge(args.judge or settings.report_judge, engine.pipe.transformer, judge_path)
    config = ReportConfig(seeds=args.seeds, attack=args.attack, attack_steps=args.attack_steps)
    report = build_report(engine, artifact, judge, config, erasure_id=erasure_id)
    if record is not None:
        report.data["erasure"]["artifact_sha256"] = record.artifact_sha256
    output = Path(args.output or f"{erasure_id or Path(args.target).stem}.grid.png")
    output.write_bytes(report.grid_png)
    sys.stdout.write(json.dumps(report.data, indent=1) + "\n")
    logger.info("wrote the grid %s (%d s)", output, report.data["seconds"])
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

    from erasure_core.cli import _common

    report = sub.add_parser("report", help="report on an erasure: efficacy, robustness, attack, usability, grid")
    _common(report)
    report.add_argument("target", help="an erasure id of the local store (ERASURE_DATA_DIR) or an .erasure file")
    report.add_argument("--seeds", type=int, default=2, help="seeds per prompt (1..8)")
    report.add_argument("--attack", action=argparse.BooleanOptionalAction, default=True)
    report.add_argument("--attack-steps", type=int, default=60)
    report.add_argument("--judge", default=None, help="auto, shapes, fills, nudenet, classifier")
    report.add_argument("--judge-path", default=None, help="a classifier judge: <path>.safetensors + <path>.json")
    report.add_argument("-o", "--output", default=None, help="the grid PNG (default <id or file stem>.grid.png)")
    report.set_defaults(func=_cmd_report)


def build_parser() -> argparse.ArgumentParser:
    return build_core_parser(add_service_commands)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
