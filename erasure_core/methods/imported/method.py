"""`import` as a registered closed-form method: the LoRA's deltas, checked against the base transformer.

The LoRA comes inline (`lora_b64`: a base64 safetensors file, bounded by the caller's body limit) or from `path`,
a `.safetensors` name inside `import_dir` (the folder an operator configures; the service sets it, a caller never
does). With no `import_dir` (the Python API, the command line) `path` is any `.safetensors` file. The artifact's
`params` describe the source (format, sha256, modules, rank), never the LoRA's bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from erasure_core.artifacts import ErasureArtifact
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import ConceptSpec
from erasure_core.errors import InvalidConfigError, InvalidLoraError
from erasure_core.lora_import import (
    LORA_SUFFIX,
    MAX_LORA_BYTES,
    ImportedLora,
    parse_lora,
    read_lora_bytes,
    resolve_import_path,
)
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress

MAX_B64_CHARS = 4 * (MAX_LORA_BYTES // 3 + 1)


class ImportConfig(BaseModel):
    """Where the LoRA comes from: exactly one of `lora_b64` and `path`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_b64: str | None = Field(default=None, min_length=1, max_length=MAX_B64_CHARS)
    path: str | None = Field(default=None, min_length=1, max_length=1024)
    import_dir: str | None = Field(default=None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _one_source(self) -> ImportConfig:
        if (self.lora_b64 is None) == (self.path is None):
            raise ValueError("give exactly one of lora_b64 (a base64 safetensors LoRA) and path")
        return self


def read_source(config: ImportConfig) -> tuple[bytes, str]:
    """The LoRA file's bytes and a name for messages."""
    if config.lora_b64 is not None:
        try:
            data = base64.b64decode(config.lora_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidLoraError(f"options.lora_b64: not valid base64 ({e})") from e
        return data, "options.lora_b64"
    assert config.path is not None
    if config.import_dir is not None:
        path = resolve_import_path(config.import_dir, config.path)
    else:
        path = Path(config.path)
        if path.suffix != LORA_SUFFIX or not path.is_file():
            raise InvalidConfigError(f"options.path {config.path!r}: not a {LORA_SUFFIX} file")
    try:
        return path.read_bytes(), f"options.path {config.path!r}"
    except OSError as e:
        raise InvalidLoraError(f"options.path {config.path!r}: cannot read ({e.strerror or e})") from e


def load_import(config: ImportConfig, transformer: Any) -> tuple[ImportedLora, str]:
    """The LoRA checked against `transformer`, and the sha256 of its file."""
    data, source = read_source(config)
    tensors = read_lora_bytes(data, source)
    return parse_lora(tensors, transformer), hashlib.sha256(data).hexdigest()


class ImportLora(ErasureMethod):
    name = "import"
    config_cls = ImportConfig
    trained = False

    def check_config(self, ctx: MethodContext, config: BaseModel) -> None:
        assert isinstance(config, ImportConfig)
        load_import(config, ctx.pipe.transformer)

    def compute(
        self,
        ctx: MethodContext,
        spec: ConceptSpec,
        config: Any,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        assert isinstance(config, ImportConfig)
        lora, sha256 = load_import(config, ctx.pipe.transformer)
        if progress is not None:
            progress(1, 1, {})
        params = {
            "source": "inline" if config.lora_b64 is not None else "path",
            "path": config.path,
            "sha256": sha256,
            "format": lora.format,
            "modules": len(lora.deltas),
            "max_rank": lora.max_rank,
        }
        meta = self.metadata(ctx, spec, config, [spec.concept])
        meta["params"] = params
        return ErasureArtifact(dict(lora.deltas), meta)
