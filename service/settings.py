"""The service's one settings object: every `ERASURE_*` environment variable is declared here and nowhere else."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from erasure_core.expansion import LLMEndpoint

_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
MIN_API_KEY_CHARS = 16
QUOTA_FIELDS = ("cost_per_window", "max_request_cost", "max_jobs", "max_erasures", "max_bytes")
HASHED_KEY_PREFIX = "sha256:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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

    Auth is on by default (`auth`): a server with no API keys refuses to start unless `ERASURE_AUTH=off` is set
    explicitly. Keys come from `api_keys` (JSON `{"key": "tenant"}` or comma-separated `key:tenant` pairs) and/or
    `api_keys_file` (the same formats, one `key:tenant` per line; for Docker secrets). A key is either the key itself
    (at least 16 characters) or `sha256:<64 hex digits>` of it, so a deployment need not store keys in the clear.
    `mandatory_erasures` is JSON mapping a tenant to the erasure ids applied to every one of its generations.
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
    # `auto`: bfloat16 on CUDA, float32 on CPU (the demo world's behaviour on CPU is unchanged).
    dtype: str = "auto"
    allow_downloads: bool = False
    # Real-model memory: diffusers CPU offload (`model`: a component at a time; `sequential`: a layer at a time, the
    # least memory and slowest), VAE tiling/slicing for large images, an int8 weight-only transformer (torchao).
    offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    quantize: Literal["none", "int8wo"] = "none"
    # The LLM "semantic spy" for expansion: any OpenAI-compatible chat endpoint, set by the operator only (a caller
    # never sends a URL). Its suggestions are kept only where the model draws them like the concept.
    llm_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    llm_model: str = Field(default="gpt-4o-mini", min_length=1, max_length=200)
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=20.0, gt=0, le=300)
    cache_dir: Path | None = None
    # LoRAs an operator may import by name (`"method": "import"`, `options.path`): a folder; unset, path imports
    # are refused (inline `options.lora_b64` imports still work).
    import_dir: Path | None = None

    # Storage and jobs.
    data_dir: Path = Path.home() / ".local" / "share" / "erasure"
    redis_url: str | None = None
    # Redis AUTH password, unless the URL carries one (`redis://:password@host:6379/0`); or read from a file (a
    # Docker secret, the one the Redis server's `requirepass` reads too).
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    queue_prefix: str = Field(default="erasure-", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    job_lease_s: float = Field(default=30.0, ge=0.5, le=3600)
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    # Erasure reports: the judge (`auto`: the demo world's own, else the classifier below; `shapes`, `fills`,
    # `nudenet` (needs the nudenet package), `classifier`) and a user classifier (`<path>.safetensors` + `.json`).
    report_judge: str = "auto"
    report_judge_path: Path | None = None
    job_timeout_s: int = Field(default=7 * 86400, ge=60)
    # Where erasure records, artifacts and job checkpoints live: `file` (under data_dir; one machine, or a folder
    # shared with flock) or `redis` (in ERASURE_REDIS_URL under queue_prefix; for replicas on several machines).
    store: Literal["file", "redis"] = "file"

    # Server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"

    # Auth and tenancy. `auth=off` (explicitly, and with no keys): every caller is `default_tenant`.
    auth: Literal["on", "off"] = "on"
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    api_keys_file: Path | None = None
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
    # Images uploaded with an erasure (`reference_images`, `positive_images`, their masks; image-guided methods):
    # per list at most `upload_max_images`, each at most `upload_max_image_bytes` decoded and `upload_max_side`
    # pixels wide and high (read from the header, before any pixel is decoded). `max_body_bytes` bounds them all.
    upload_max_images: int = Field(default=16, ge=1, le=64)
    upload_max_image_bytes: int = Field(default=4 * 1024**2, ge=1024)
    upload_max_side: int = Field(default=2048, ge=16, le=4096)
    max_video_frames: int = Field(default=129, ge=1)
    min_fps: int = Field(default=1, ge=1)
    max_fps: int = Field(default=60, ge=1)
    default_fps: int = Field(default=24, ge=1)

    # Per-tenant quotas (the operator tenant is exempt; 0 turns a limit off). A generation costs width x height x
    # steps x images (or frames) / 1e6, "megapixel-steps": FLUX.1 at 1024x1024, 28 steps, 4 images costs 117.
    # `tenant_quotas` (JSON) overrides any of them per tenant: {"alice": {"cost_per_window": 100, "max_jobs": 1}}.
    # The per-request default admits Open-Sora 2.0's largest clip (768x768, 129 frames, 50 steps: 3804); the window
    # bounds a runaway key (a full queue of 8 x 100 steps x 2048x2048 would be 3355 each), it does not share a GPU
    # fairly: set it near what your GPUs produce per window.
    quota_cost_per_window: float = Field(default=8000.0, ge=0, allow_inf_nan=False)
    quota_window_s: float = Field(default=60.0, gt=0, le=86400)
    quota_max_request_cost: float = Field(default=4000.0, ge=0, allow_inf_nan=False)
    quota_max_jobs: int = Field(default=4, ge=0)
    quota_max_erasures: int = Field(default=1000, ge=0)
    quota_max_bytes: int = Field(default=10 * 1024**3, ge=0)
    tenant_quotas: dict[str, dict[str, float]] = Field(default_factory=dict)

    # Runtime.
    adapter_cache_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_queue: int = Field(default=256, ge=1)
    # Requests the active erasure set may run ahead of an older request of another set, per turn (scheduler).
    max_skips: int = Field(default=8, ge=0)
    warmup: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            raise ValueError("ERASURE_API_KEYS is set but blank: give keys, or unset it")
        return _parse_keys(value, source="ERASURE_API_KEYS")

    @field_validator("tenant_quotas")
    @classmethod
    def _check_tenant_quotas(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for tenant, limits in value.items():
            unknown = sorted(set(limits) - set(QUOTA_FIELDS))
            if unknown:
                raise ValueError(f"tenant_quotas[{tenant!r}]: unknown limits {unknown}; known: {list(QUOTA_FIELDS)}")
            negative = sorted(k for k, v in limits.items() if not 0 <= v < float("inf"))  # NaN fails both
            if negative:
                raise ValueError(f"tenant_quotas[{tenant!r}]: limits must be finite and >= 0 (0: off): {negative}")
        return value

    @field_validator("flux_default_size", "open_sora_default_size")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("import_dir")
    @classmethod
    def _check_import_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"ERASURE_IMPORT_DIR {str(value)!r} is not a folder")
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

    @model_validator(mode="after")
    def _check_store(self) -> Settings:
        if self.store == "redis" and not self.redis_url:
            raise ValueError("ERASURE_STORE=redis needs ERASURE_REDIS_URL")
        return self

    @model_validator(mode="after")
    def _read_redis_password(self) -> Settings:
        if self.redis_password_file is not None:
            try:
                password = self.redis_password_file.read_text().strip()
            except OSError as e:
                raise ValueError(
                    f"cannot read ERASURE_REDIS_PASSWORD_FILE {str(self.redis_password_file)!r}: {e.strerror or e}"
                ) from None
            if not password:
                raise ValueError(f"ERASURE_REDIS_PASSWORD_FILE {str(self.redis_password_file)!r} is empty")
            self.redis_password = SecretStr(password)
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.api_keys_file is not None:
            self.api_keys = {**self.api_keys, **_read_keys_file(self.api_keys_file)}
        for key, tenant in self.api_keys.items():
            _check_key(key, tenant)
        if self.auth == "on" and not self.api_keys:
            raise ValueError(
                "auth is on (ERASURE_AUTH, default 'on') but no API keys are configured: set ERASURE_API_KEYS or "
                "ERASURE_API_KEYS_FILE, or set ERASURE_AUTH=off explicitly to serve without authentication"
            )
        if self.auth == "off" and self.api_keys:
            raise ValueError("ERASURE_AUTH=off but API keys are configured: remove the keys or turn auth on")
        if self.api_keys:  # a policy for a tenant no key belongs to is a typo that would silently apply to nobody
            known = {*self.api_keys.values(), self.operator_tenant, "*"}  # '*': every tenant
            unknown = sorted(set(self.mandatory_erasures) - known)
            if unknown:
                raise ValueError(
                    f"ERASURE_MANDATORY_ERASURES names tenants no API key belongs to: {unknown}; "
                    f"known tenants: {sorted(known)}"
                )
        return self

    def llm_endpoint(self) -> LLMEndpoint | None:
        """The configured expansion LLM, or None."""
        if self.llm_url is None:
            return None
        key = self.llm_api_key.get_secret_value() if self.llm_api_key is not None else None
        return LLMEndpoint(url=self.llm_url, model=self.llm_model, api_key=key, timeout_s=self.llm_timeout_s)

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    def model_overrides(self, model: str) -> ModelOverrides:
        """The configured source and call-default overrides of one model ("flux" or "open-sora")."""
        prefix = model.replace("-", "_")
        size = getattr(self, f"{prefix}_default_size")
        return ModelOverrides(
            source=getattr(self, f"{prefix}_model"),
            max_sequence_length=getattr(self, f"{prefix}_max_sequence_length"),
            default_size=parse_size(size) if size else None,
        )


def _parse_keys(text: str, source: str) -> dict[str, str]:
    """A JSON object `{key: tenant}`, or `key:tenant` (or `sha256:<hex>:tenant`) items separated by commas or
    newlines, where a line starting with `#` is a comment."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid JSON: {e}") from None
        if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{source} must be a JSON object mapping keys to tenant names")
        pairs = dict(data)
        if not pairs:
            raise ValueError(f"{source} names no keys")
        return pairs
    lines = (line for line in text.splitlines() if not line.strip().startswith("#"))
    pairs = {}
    for item in (part.strip() for line in lines for part in line.split(",")):
        if not item:
            continue
        if item.startswith(HASHED_KEY_PREFIX):  # sha256:<hex>:tenant
            digest, sep, tenant = item[len(HASHED_KEY_PREFIX) :].partition(":")
            key = HASHED_KEY_PREFIX + digest
        else:
            key, sep, tenant = item.partition(":")
        if not sep or not key.strip() or not tenant.strip():
            raise ValueError(f"{source} must be JSON or 'key:tenant' pairs (a key may be 'sha256:<hex>')")
        pairs[key.strip()] = tenant.strip()
    if not pairs:
        raise ValueError(f"{source} names no keys")
    return pairs


def _read_keys_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read ERASURE_API_KEYS_FILE {str(path)!r}: {e.strerror or e}") from None
    return _parse_keys(text, source=f"ERASURE_API_KEYS_FILE {str(path)!r}")


def _check_key(key: str, tenant: str) -> None:
    if not tenant.strip():
        raise ValueError("every API key needs a non-blank tenant name")
    if key.startswith(HASHED_KEY_PREFIX):
        if not _SHA256_HEX.fullmatch(key[len(HASHED_KEY_PREFIX) :]):
            raise ValueError("a hashed API key must be 'sha256:' followed by 64 lowercase hex digits")
    elif len(key.strip()) < MIN_API_KEY_CHARS or key != key.strip():
        raise ValueError(
            f"API keys must be at least {MIN_API_KEY_CHARS} characters with no surrounding blanks "
            f"(tenant {tenant!r} has a key of {len(key.strip())})"
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
