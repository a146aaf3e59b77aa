"""Settings from ERASURE_* variables, and call defaults read from the loaded model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.pipelines import PipelinePool, read_defaults
from service.settings import Settings, parse_size

ROOT = Path(__file__).resolve().parents[2]
K1, K2 = "k1-0123456789abcdef", "k2-0123456789abcdef"  # API keys must have at least 16 characters


def test_environment_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERASURE_FLUX_MODEL", raising=False)
    monkeypatch.setenv("ERASURE_API_KEYS", f"{K1}:alpha, {K2}:beta")
    monkeypatch.setenv("ERASURE_MANDATORY_ERASURES", '{"beta": ["er_000000000000000000000000"]}')
    monkeypatch.setenv("ERASURE_FLUX_DEFAULT_SIZE", "64x48")
    monkeypatch.setenv("ERASURE_FLUX_MAX_SEQUENCE_LENGTH", "16")
    monkeypatch.setenv("ERASURE_ALLOW_DOWNLOADS", "1")
    monkeypatch.setenv("ERASURE_REDIS_URL", "")  # empty = unset
    settings = Settings()
    assert settings.api_keys == {K1: "alpha", K2: "beta"} and settings.auth_enabled
    assert settings.mandatory_erasures == {"beta": ["er_000000000000000000000000"]}
    assert settings.allow_downloads and settings.redis_url is None
    overrides = settings.model_overrides("flux")
    assert overrides.source == "demo" and overrides.default_size == (64, 48) and overrides.max_sequence_length == 16
    assert settings.model_overrides("open-sora").source is None


def test_api_keys_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERASURE_API_KEYS", f'{{"{K1}": "operator"}}')
    assert Settings().api_keys == {K1: "operator"}
    monkeypatch.delenv("ERASURE_API_KEYS")
    assert not Settings(api_keys={}, auth="off").auth_enabled


@pytest.mark.parametrize(
    "field,value", [("api_keys", "no-tenant"), ("flux_default_size", "big"), ("port", "99999"), ("max_steps", "0")]
)
def test_invalid_values_fail_at_startup(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv("ERASURE_AUTH", "off")  # so that only the value under test can fail
    Settings()
    monkeypatch.setenv(f"ERASURE_{field.upper()}", value)
    with pytest.raises((ValidationError, ValueError)):
        Settings()


def test_auth_is_on_unless_turned_off_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ERASURE_AUTH", "ERASURE_API_KEYS", "ERASURE_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="ERASURE_AUTH=off"):
        Settings()  # no keys and auth not turned off: refuses to start
    monkeypatch.setenv("ERASURE_API_KEYS", "")  # empty = unset: the same
    with pytest.raises(ValidationError, match="no API keys"):
        Settings()
    monkeypatch.setenv("ERASURE_AUTH", "off")
    assert not Settings().auth_enabled
    with pytest.raises(ValidationError, match="keys are configured"):
        Settings(api_keys={K1: "alpha"})  # off and keys at once is a contradiction, not a silent choice
    monkeypatch.setenv("ERASURE_AUTH", "maybe")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    "value",
    [" ", " , ", "short-key:alpha", f"{K1}: ", f":{K1}", "sha256:abc:alpha", f"sha256:{'A' * 64}:alpha"],
    ids=["blank", "blank-items", "short", "no-tenant", "no-key", "bad-hash", "upper-hash"],
)
def test_blank_short_or_malformed_keys_fail_at_startup(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ERASURE_API_KEYS", value)
    for auth in ("on", "off"):  # a blank ERASURE_API_KEYS no longer silently means "auth off"
        monkeypatch.setenv("ERASURE_AUTH", auth)
        with pytest.raises(ValidationError):
            Settings()


def test_keys_may_be_hashed_and_read_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ERASURE_API_KEYS", raising=False)
    digest = hashlib.sha256(K2.encode()).hexdigest()
    lines = tmp_path / "keys"
    lines.write_text(f"# key:tenant, one a line\n\n{K1}:alpha\n  sha256:{digest}:beta\n")
    monkeypatch.setenv("ERASURE_API_KEYS_FILE", str(lines))
    assert Settings().api_keys == {K1: "alpha", f"sha256:{digest}": "beta"}
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({K1: "alpha"}))
    monkeypatch.setenv("ERASURE_API_KEYS", f"sha256:{digest}:beta")  # both sources together
    assert Settings(api_keys_file=as_json).api_keys == {K1: "alpha", f"sha256:{digest}": "beta"}
    for bad, message in (
        (tmp_path / "missing", "cannot read"),
        (tmp_path, "cannot read"),
        (tmp_path / "empty", "names no keys"),
        (tmp_path / "short", "at least 16"),
    ):
        (tmp_path / "empty").write_text("\n")
        (tmp_path / "short").write_text("abc:alpha\n")
        with pytest.raises(ValidationError, match=message):
            Settings(api_keys_file=bad)


def test_serve_and_worker_refuse_to_start_without_keys(tmp_path: Path) -> None:
    """The container's commands exit (2) with the reason instead of serving open."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASURE_")}
    env["ERASURE_DATA_DIR"] = str(tmp_path)
    for command in (["serve", "--port", "1"], ["worker"], ["worker", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert "ERASURE_AUTH=off" in result.stderr and "Traceback" not in result.stderr


def test_mandatory_policy_must_name_known_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {K1: "alpha", K2: "operator"}
    policy = ["er_" + "0" * 24]
    assert Settings(api_keys=keys, mandatory_erasures={"alpha": policy, "operator": policy}).mandatory_erasures
    with pytest.raises(ValidationError, match="no API key belongs to"):
        Settings(api_keys=keys, mandatory_erasures={"alpah": policy})
    monkeypatch.setenv("ERASURE_OPERATOR_TENANT", "root")  # the operator-wide scope needs no key of its own
    assert Settings(api_keys={K1: "alpha"}, mandatory_erasures={"root": policy}).mandatory_erasures


def test_parse_size() -> None:
    assert parse_size("32x16") == (32, 16)
    for bad in ("32", "x32", "0x32", "32x32x3", "-1x2", "32 x 32"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_defaults_come_from_the_model(demo_pool: PipelinePool) -> None:
    handle = demo_pool.get("flux")
    assert (handle.defaults.width, handle.defaults.height) == (32, 32)
    assert handle.defaults.max_sequence_length == handle.engine.pipe.tokenizer_2.model_max_length == 24
    assert handle.defaults.packing == handle.engine.pipe.vae_scale_factor * 2
    settings = Settings(flux_default_size="48x32", flux_max_sequence_length=12, auth="off")
    custom = read_defaults(handle.engine, settings, "flux")
    assert (custom.width, custom.height, custom.max_sequence_length) == (48, 32, 12)


def test_every_model_of_the_core_table_has_its_settings() -> None:
    from erasure_core.models import MODEL_NAMES

    settings = Settings(auth="off")
    for name in MODEL_NAMES:
        overrides = settings.model_overrides(name)  # ERASURE_<NAME>_MODEL / _MAX_SEQUENCE_LENGTH / _DEFAULT_SIZE
        assert overrides.source is None or isinstance(overrides.source, str)
