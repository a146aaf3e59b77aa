"""Writes (or checks) openapi.yaml from the app's generated spec: `python -m service.openapi [--check] [PATH]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from erasure_core.models import MODEL_NAMES
from service.main import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


def render() -> str:
    """The contract as YAML: the spec a deployment with the default limits and every model publishes.

    A deployment publishes its own at /openapi.json: its limits (`ERASURE_MAX_*`, sizes) and only the models it
    serves (service/api/contract.py).
    """
    every_model = {f"{name.replace('-', '_')}_model": "demo" for name in MODEL_NAMES}
    settings = Settings.model_validate(
        {"auth": "off", "api_keys": {}, "api_keys_file": None, "mandatory_erasures": {}, **every_model}
    )
    return yaml.safe_dump(create_app(settings).openapi(), sort_keys=False, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="fail if the file differs from the generated spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = render()
    if args.check:
        if not args.path.is_file() or args.path.read_text() != text:
            logger.error("%s is out of date: run `python -m service.openapi`", args.path)
            return 1
        logger.info("%s is up to date", args.path)
        return 0
    args.path.write_text(text)
    logger.info("wrote %s", args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
