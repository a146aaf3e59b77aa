"""The core's command-line subcommands: `generate`, `erase` and `convert` (no server, no queue).

The `erasure` program (`service.cli`) adds `serve` and `worker` to these; `python -m erasure_core.cli` runs the core
ones alone. Loading options default to the same `ERASURE_*` variables the service reads (`ERASURE_DEVICE`,
`ERASURE_DTYPE`, `ERASURE_ALLOW_DOWNLOADS`, `ERASURE_OFFLOAD`, `ERASURE_VAE_TILING`, `ERASURE_VAE_SLICING`,
`ERASURE_QUANTIZE`), so a command line run loads a model the way the deployment does; flags override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("erasure")

AddCommands = Callable[[Any], None]  # receives the subparsers action of `build_parser`


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


_TRUE = ("1", "true", "yes", "on")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _load(args: argparse.Namespace) -> Any:
    from erasure_core.expansion import LLMEndpoint
    from erasure_core.models import load_engine
    from erasure_core.pipelines.loading import LoadOptions

    options = LoadOptions(
        offload=args.offload, vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing, quantize=args.quantize
    )
    return load_engine(
        "flux",
        args.model,
        device=args.device,
        dtype=args.dtype,
        allow_downloads=args.allow_downloads,
        options=options,
        llm=LLMEndpoint.from_env(),
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from erasure_core.artifacts import load_artifact
    from erasure_core.engines import GenerationParams
    from erasure_core.media import to_png_bytes

    engine = _load(args)
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

    spec = ConceptSpec(
        concept=args.concept,
        kind=args.kind,
        synonyms=tuple(args.synonym),
        preserve=tuple(args.preserve),
        anchor=args.anchor,
        expand=args.expand,
    )
    engine = _load(args)
    artifact = engine.erase(spec, method=args.method, options=dict(args.option))
    save_artifact(artifact, args.output)
    logger.info("wrote %s (%s)", args.output, json.dumps(artifact.metadata.get("stats", {})))
    if args.lora_output:
        save_lora(artifact, args.lora_output)
        logger.info("wrote diffusers LoRA %s", args.lora_output)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--model", default="demo", help="'demo', a diffusers Flux folder, or a hub id")
    p.add_argument("--device", default=env("ERASURE_DEVICE", "auto"))
    p.add_argument("--dtype", default=env("ERASURE_DTYPE", "auto"), help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument(
        "--allow-downloads",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("ERASURE_ALLOW_DOWNLOADS"),
        help="fetch a hub id's weights (default: ERASURE_ALLOW_DOWNLOADS; off)",
    )
    p.add_argument("--offload", choices=["none", "model", "sequential"], default=env("ERASURE_OFFLOAD", "none"))
    p.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=_env_flag("ERASURE_VAE_TILING"))
    p.add_argument("--vae-slicing", action=argparse.BooleanOptionalAction, default=_env_flag("ERASURE_VAE_SLICING"))
    p.add_argument("--quantize", choices=["none", "int8wo"], default=env("ERASURE_QUANTIZE", "none"))


def add_core_commands(sub: Any) -> None:
    """Adds `generate`, `erase` and `convert` to a subparsers action."""
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
    er.add_argument(
        "--expand",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mine phrasings the model draws as the concept and neighbours it draws differently (default: on, as in "
        "the service; --no-expand erases exactly the named phrasings)",
    )
    er.add_argument("--method", default="ice")
    er.add_argument("--option", action="append", default=[], type=_parse_option, help="KEY=VALUE hyperparameter")
    er.add_argument("-o", "--output", required=True)
    er.add_argument("--lora-output", default=None, help="also write a diffusers-compatible LoRA here")
    er.set_defaults(func=_cmd_erase)
    _add_convert(sub)


def _json_file(text: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(text).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise argparse.ArgumentTypeError(f"{text}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON object")
    return {k: v for k, v in value.items() if not k.startswith("_")}


def _cmd_convert_open_sora(args: argparse.Namespace) -> int:
    from erasure_core.pipelines.open_sora.assemble import ReleaseInputs, assemble_open_sora

    inputs = ReleaseInputs(
        Path(args.checkpoint), Path(args.vae), Path(args.t5), Path(args.clip), args.transformer_config, args.vae_config
    )
    shard = int(args.max_shard_gib * 2**30)
    out = assemble_open_sora(inputs, Path(args.output), args.force, args.check_only, shard)
    logger.info("%s %s: serve it with ERASURE_OPEN_SORA_MODEL=%s", "checked" if args.check_only else "wrote", out, out)
    return 0


def _add_convert(sub: Any) -> None:
    """`erasure convert open-sora ...`: the official Open-Sora 2.0 release into a folder the service loads."""
    convert = sub.add_parser("convert", help="assemble official model releases into servable folders")
    kinds = convert.add_subparsers(dest="kind", required=True)
    osr = kinds.add_parser("open-sora", help="Open-Sora 2.0: Open_Sora_v2 + hunyuan_vae + T5 + CLIP -> OUT")
    osr.add_argument("--checkpoint", required=True, help="Open_Sora_v2.safetensors")
    osr.add_argument("--vae", required=True, help="hunyuan_vae.safetensors")
    osr.add_argument("--t5", required=True, help="the google/t5-v1_1-xxl folder (config, safetensors, tokenizer)")
    osr.add_argument("--clip", required=True, help="the openai/clip-vit-large-patch14 folder")
    osr.add_argument("-o", "--output", required=True, help="the folder to write (must not exist unless --force)")
    osr.add_argument("--force", action="store_true", help="replace an existing OUT")
    osr.add_argument("--check-only", action="store_true", help="check every input, write nothing")
    osr.add_argument("--transformer-config", type=_json_file, default=None, help="JSON overrides (default: 2.0)")
    osr.add_argument("--vae-config", type=_json_file, default=None, help="JSON overrides (default: hunyuan_vae)")
    osr.add_argument("--max-shard-gib", type=float, default=5.0, help="largest safetensors shard written")
    osr.set_defaults(func=_cmd_convert_open_sora)


def build_parser(*extra: AddCommands) -> argparse.ArgumentParser:
    """The `erasure` parser with the core subcommands and those each of `extra` adds."""
    parser = argparse.ArgumentParser(prog="erasure", description="Concept erasure for rectified-flow generators")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_core_commands(sub)
    for add in extra:
        add(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parses `argv`, sets up logging and runs the chosen subcommand; library errors exit 1 with their code."""
    args = parser.parse_args(argv)
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


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
