"""The erasure artifact: low-rank weight deltas plus JSON metadata, in one safetensors file.

Every erasure method, closed-form or trained, produces this one kind of thing. For each edited module the file holds
`{module}.lora_A` [r, in] and `{module}.lora_B` [out, r]; the module's output becomes W x + b + scale * B A x. The
JSON metadata (method, base-model identity and a hash of the edited layers, concept spec, hyperparameters, library
version) sits in the safetensors header, so weights and metadata can never drift apart.

Files are written to a temporary name in the same folder, fsynced, then renamed into place: a reader sees the old
file or the new one, never a half-written one. Loading never unpickles: safetensors only, with shapes checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from erasure_core.errors import ArtifactError

FORMAT_VERSION = 1
_META_KEY = "erasure"
MAX_ARTIFACT_BYTES = 2 * 1024**3


def library_version() -> str:
    from erasure_core import __version__

    return __version__


@dataclass(frozen=True)
class LowRankDelta:
    """scale * B @ A added to a Linear module's output: A [r, in], B [out, r]."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> torch.Tensor:
        """The full [out, in] weight delta."""
        return self.scale * (self.B.float() @ self.A.float())


@dataclass
class ErasureArtifact:
    """An erasure: per-module low-rank deltas plus metadata.

    Attributes:
        deltas: module name (relative to the transformer) -> delta.
        metadata: JSON-serialisable dict with at least `method`, `family`, `base_model`, `concept`, `params`.
    """

    deltas: dict[str, LowRankDelta]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(d.A.numel() * d.A.element_size() + d.B.numel() * d.B.element_size() for d in self.deltas.values())

    def content_hash(self) -> str:
        """A hash of the weights (not the metadata): equal deltas give equal hashes."""
        digest = hashlib.sha256()
        for name in sorted(self.deltas):
            delta = self.deltas[name]
            digest.update(name.encode())
            digest.update(delta.A.float().contiguous().numpy().tobytes())
            digest.update(delta.B.float().contiguous().numpy().tobytes())
            digest.update(repr(delta.scale).encode())
        return digest.hexdigest()

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, delta in self.deltas.items():
            out[f"{name}.lora_A"] = delta.A.contiguous()
            out[f"{name}.lora_B"] = delta.B.contiguous()
        return out

    def header(self) -> dict[str, str]:
        meta = dict(self.metadata)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta.setdefault("library_version", library_version())
        meta["scales"] = {name: d.scale for name, d in self.deltas.items()}
        meta["content_hash"] = self.content_hash()
        return {_META_KEY: json.dumps(meta, sort_keys=True)}

    def to_bytes(self) -> bytes:
        return save(self.tensors(), metadata=self.header())

    def to_diffusers_lora(self, prefix: str = "transformer") -> dict[str, torch.Tensor]:
        """A state dict in the peft/diffusers LoRA layout that `pipe.load_lora_weights` accepts.

        diffusers infers each module's rank from lora_B and uses lora_alpha = rank (scale 1), so any other scale is
        folded into lora_B here.
        """
        out: dict[str, torch.Tensor] = {}
        for name, delta in self.deltas.items():
            out[f"{prefix}.{name}.lora_A.weight"] = delta.A.contiguous().clone()
            out[f"{prefix}.{name}.lora_B.weight"] = (delta.B * delta.scale).contiguous()
        return out


def fsync_dir(folder: Path) -> None:
    """Makes a rename in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` atomically: a `.{name}.*.tmp` file in the same folder, fsynced, renamed into place.

    A reader sees the old file or the new one, never a partial one; a crash leaves at most the staging file, under a
    name that recovery owns.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Writes a safetensors file atomically (`atomic_write_bytes`), serialized in memory.

    Serializing ourselves (not `save_file`) matters: recent safetensors releases stage through their own
    `.tmpXXXXXX` file in the target folder, which a crash would leave behind under a name recovery does not own.
    """
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def save_artifact(artifact: ErasureArtifact, path: str | Path) -> Path:
    """Writes the artifact atomically; returns the path."""
    path = Path(path)
    atomic_write_safetensors(path, artifact.tensors(), artifact.header())
    return path


def save_lora(artifact: ErasureArtifact, path: str | Path) -> Path:
    """Writes the diffusers-compatible LoRA export atomically."""
    path = Path(path)
    meta = {"format": "pt", "erasure_content_hash": artifact.content_hash()}
    atomic_write_safetensors(path, artifact.to_diffusers_lora(), meta)
    return path


def _parse(tensors: dict[str, torch.Tensor], header: dict[str, str] | None, source: str) -> ErasureArtifact:
    if not header or _META_KEY not in header:
        raise ArtifactError(f"{source}: not an erasure file (no '{_META_KEY}' metadata in the safetensors header)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{source}: erasure metadata is not valid JSON") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{source}: unsupported erasure format version {meta.get('format_version')!r}")
    scales = meta.pop("scales", {})
    deltas: dict[str, LowRankDelta] = {}
    for name, scale in scales.items():
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ArtifactError(f"{source}: module {name!r} has missing or mis-shaped lora_A/lora_B")
        deltas[name] = LowRankDelta(a, b, float(scale))
    if len(tensors) != 2 * len(deltas):
        raise ArtifactError(f"{source}: tensors present that the metadata does not describe")
    artifact = ErasureArtifact(deltas, meta)
    if meta.get("content_hash") != artifact.content_hash():
        raise ArtifactError(f"{source}: weights do not match the content hash in the metadata")
    return artifact


def load_artifact(path: str | Path) -> ErasureArtifact:
    """Loads and validates an erasure file (safetensors only; size and shapes checked)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such erasure file")
    if path.stat().st_size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"{path}: larger than {MAX_ARTIFACT_BYTES} bytes")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except ArtifactError:
        raise
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ArtifactError(f"{path}: not a valid safetensors file ({e})") from e
    return _parse(tensors, header, str(path))


def artifact_from_bytes(data: bytes, source: str = "<bytes>") -> ErasureArtifact:
    """Parses an erasure from bytes (e.g. an upload), with the same checks as `load_artifact`."""
    from safetensors.torch import load

    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"{source}: larger than {MAX_ARTIFACT_BYTES} bytes")
    try:
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__")
    except Exception as e:
        raise ArtifactError(f"{source}: not a valid safetensors payload ({e})") from e
    return _parse(tensors, header, source)
