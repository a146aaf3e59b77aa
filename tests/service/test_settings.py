"""Settings from ERASURE_* variables, and call defaults read from the loaded model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.pipelines import PipelinePool, read_defaults
from service.settings import Settings, parse_size


def test_environment_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERASURE_FLUX_MODEL", raising=False)
    monkeypatch.setenv("ERASURE_API_KEYS", "k1:alpha, k2:beta")
    monkeypatch.setenv("ERASURE_MANDATORY_ERASURES", '{"beta": ["er_000000000000000000000000"]}')
    monkeypatch.setenv("ERASURE_FLUX_DEFAULT_SIZE", "64x48")
    monkeypatch.setenv("ERASURE_FLUX_MAX_SEQUENCE_LENGTH", "16")
    monkeypatch.setenv("ERASURE_ALLOW_DOWNLOADS", "1")
    monkeypatch.setenv("ERASURE_REDIS_URL", "")  # empty = unset
    settings = Settings()
    assert settings.api_keys == {"k1": "alpha", "k2": "beta"} and settings.auth_enabled
    assert settings.mandatory_erasures == {"beta": ["er_000000000000000000000000"]}
    assert settings.allow_downloads and settings.redis_url is None
    overrides = settings.model_overrides("flux")
    assert overrides.source == "demo" and overrides.default_size == (64, 48) and overrides.max_sequence_length == 16
    assert settings.model_overrides("open-sora").source is None


def test_api_keys_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERASURE_API_KEYS", '{"secret": "operator"}')
    assert Settings().api_keys == {"secret": "operator"}
    assert not Settings(api_keys={}).auth_enabled


@pytest.mark.parametrize(
    "field,value", [("api_keys", "no-tenant"), ("flux_default_size", "big"), ("port", "99999"), ("max_steps", "0")]
)
def test_invalid_values_fail_at_startup(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(f"ERASURE_{field.upper()}", value)
    with pytest.raises((ValidationError, ValueError)):
        Settings()


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
    custom = read_defaults(handle.engine, Settings(flux_default_size="48x32", flux_max_sequence_length=12), "flux")
    assert (custom.width, custom.height, custom.max_sequence_length) == (48, 32, 12)


def test_every_model_of_the_core_table_has_its_settings() -> None:
    from erasure_core.models import MODEL_NAMES

    settings = Settings()
    for name in MODEL_NAMES:
        overrides = settings.model_overrides(name)  # ERASURE_<NAME>_MODEL / _MAX_SEQUENCE_LENGTH / _DEFAULT_SIZE
        assert overrides.source is None or isinstance(overrides.source, str)
