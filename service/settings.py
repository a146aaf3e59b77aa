"""The service's one settings object: every `ERASURE_*` environment variable is declared here and nowhere else."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


def parse_size(text: str) -> tuple[int, int]:
    """Parses "WxH" into (width, height). Raises ValueError on anything else."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"size must look like '512x512' (WIDTHxHEIGHT), got {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class ModelOverrides:
    """Per-model overrides of the defaults read from the loaded pipeline (None: use the model's own)."""

    source: str | None
    max_sequence_length: int | None
    default_size: tuple[int, int] | None


class Settings(BaseSettings):
    """Service configuration from `ERASURE_*` environment variables (or keyword arguments in tests).

    `api_keys` accepts JSON (`{"key": "tenant"}`) or comma-separated `key:tenant` pairs; `mandatory_erasures` is JSON
    mapping a tenant to the erasure ids applied to every one of its generations.
    """

    model_config = SettingsConfigDict(env_prefix="ERASURE_", env_ignore_empty=True, extra="ignore")

    # Models: a diffusers folder, a hub id, or "demo" (the bundled Flux demo world). Open-Sora is off when unset.
    flux_model: str = "demo"
    open_sora_model: str | None = None
    flux_max_sequence_length: int | None = Field(default=None, ge=1, le=512)
    flux_default_size: str | None = None
    open_sora_max_sequence_length: int | None = Field(default=None, ge=1, le=512)
    open_sora_default_size: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    allow_downloads: bool = False
    cache_dir: Path | None = None

    # Storage and jobs.
    data_dir: Path = Path.home() / ".local" / "share" / "erasure"
    redis_url: str | None = None
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    queue_prefix: str = Field(default="erasure-", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    job_lease_s: float = Field(default=30.0, ge=0.5, le=3600)
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    job_timeout_s: int = Field(default=7 * 86400, ge=60)

    # Server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"

    # Auth and tenancy. No keys: auth off, every caller is `default_tenant`.
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    operator_tenant: str = "operator"
    default_tenant: str = "default"
    mandatory_erasures: dict[str, list[str]] = Field(default_factory=dict)

    # Request limits.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_images: int = Field(default=8, ge=1, le=64)
    max_steps: int = Field(default=100, ge=1)
    default_steps: int = Field(default=20, ge=1)
    default_guidance_scale: float = Field(default=3.5, ge=0.0)
    min_image_side: int = Field(default=16, ge=1)
    max_image_side: int = Field(default=2048, ge=1)
    max_erasures_per_request: int = Field(default=16, ge=0)
    max_video_frames: int = Field(default=129, ge=1)
    min_fps: int = Field(default=1, ge=1)
    max_fps: int = Field(default=60, ge=1)
    default_fps: int = Field(default=24, ge=1)

    # Runtime.
    adapter_cache_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_queue: int = Field(default=256, ge=1)
    max_skips: int = Field(default=8, ge=0)
    warmup: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, tenant = item.partition(":")
            if not sep or not key or not tenant:
                raise ValueError("ERASURE_API_KEYS must be JSON or comma-separated 'key:tenant' pairs")
            pairs[key] = tenant
        return pairs

    @field_validator("flux_default_size", "open_sora_default_size")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.min_image_side > self.max_image_side:
            raise ValueError("min_image_side must not exceed max_image_side")
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps must not exceed max_steps")
        if not self.min_fps <= self.default_fps <= self.max_fps:
            raise ValueError("default_fps must lie between min_fps and max_fps")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def model_overrides(self, model: str) -> ModelOverrides:
        """The configured source and call-default overrides of one model ("flux" or "open-sora")."""
        prefix = model.replace("-", "_")
        size = getattr(self, f"{prefix}_default_size")
        return ModelOverrides(
            source=getattr(self, f"{prefix}_model"),
            max_sequence_length=getattr(self, f"{prefix}_max_sequence_length"),
            default_size=parse_size(size) if size else None,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
