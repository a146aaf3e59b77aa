"""The `erasure` command line: generate, erase, and (with the service installed) serve and worker."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("erasure")


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _cmd_generate(args: argparse.Namespace) -> int:
    from erasure_core.artifacts import load_artifact
    from erasure_core.engine import ErasureEngine
    from erasure_core.generation import GenerationParams, to_png_bytes

    engine = ErasureEngine.load(args.model, device=args.device, dtype=args.dtype)
    names = []
    for path in args.erasure:
        name = Path(path).stem
        engine.attach(name, load_artifact(path))
        names.append(name)
    params = GenerationParams(steps=args.steps, guidance_scale=args.guidance_scale, height=args.size, width=args.size)
    seeds = [args.seed + i for i in range(args.n)]
    images = engine.generate([args.prompt] * args.n, seeds, params, erasures=names)
    out = Path(args.output)
    for i, image in enumerate(images):
        target = out if args.n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        target.write_bytes(to_png_bytes(image))
        logger.info("wrote %s", target)
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    from erasure_core.artifacts import save_artifact, save_lora
    from erasure_core.concepts import ConceptSpec
    from erasure_core.engine import ErasureEngine

    spec = ConceptSpec(
        concept=args.concept,
        kind=args.kind,
        synonyms=tuple(args.synonym),
        preserve=tuple(args.preserve),
        anchor=args.anchor,
        expand=args.expand,
    )
    engine = ErasureEngine.load(args.model, device=args.device, dtype=args.dtype)
    artifact = engine.erase(spec, method=args.method, options=dict(args.option))
    save_artifact(artifact, args.output)
    logger.info("wrote %s (%s)", args.output, json.dumps(artifact.metadata.get("stats", {})))
    if args.lora_output:
        save_lora(artifact, args.lora_output)
        logger.info("wrote diffusers LoRA %s", args.lora_output)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from service.main import run_server
    except ImportError:
        logger.error("the service package is not installed")
        return 2
    run_server(host=args.host, port=args.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    try:
        from service.jobs.worker import run_worker
    except ImportError:
        logger.error("the service package with job support is not installed")
        return 2
    processed = run_worker(burst=args.burst)
    logger.info("worker stopped (%s)", "jobs processed" if processed else "no jobs processed")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="'demo', a diffusers Flux folder, or a hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erasure", description="Concept erasure for rectified-flow generators")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images, optionally with erasures attached")
    _common(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance-scale", type=float, default=3.5)
    gen.add_argument("--size", type=int, default=None, help="square size in pixels (default: the model's native)")
    gen.add_argument("--n", type=int, default=1)
    gen.add_argument("--erasure", action="append", default=[], help="an .erasure file (repeatable)")
    gen.add_argument("-o", "--output", required=True)
    gen.set_defaults(func=_cmd_generate)

    er = sub.add_parser("erase", help="compute an erasure and write it as an .erasure file")
    _common(er)
    er.add_argument("--concept", required=True)
    er.add_argument("--kind", default="object", choices=["object", "style", "attribute"])
    er.add_argument("--synonym", action="append", default=[])
    er.add_argument("--preserve", action="append", default=[])
    er.add_argument("--anchor", default=None)
    er.add_argument("--expand", action="store_true", help="mine more phrasings from the text encoder")
    er.add_argument("--method", default="ice")
    er.add_argument("--option", action="append", default=[], type=_parse_option, help="KEY=VALUE hyperparameter")
    er.add_argument("-o", "--output", required=True)
    er.add_argument("--lora-output", default=None, help="also write a diffusers-compatible LoRA here")
    er.set_defaults(func=_cmd_erase)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (needs ERASURE_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=_cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from erasure_core.errors import ErasureError

    try:
        return int(args.func(args))
    except ErasureError as e:
        logger.error("%s: %s", e.code, e)
        return 1
    except ValueError as e:  # pydantic validation of the concept spec
        logger.error("invalid_request: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
