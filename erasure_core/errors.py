"""Typed errors of erasure_core. The service maps each to an HTTP status and a stable code in one table."""

from __future__ import annotations


class ErasureError(Exception):
    """Base class; `code` is the stable snake_case identifier reported to API callers."""

    code = "erasure_error"


class InvalidConfigError(ErasureError, ValueError):
    """A concept spec or method hyperparameter is out of range or inconsistent."""

    code = "invalid_request"


class UnknownMethodError(InvalidConfigError):
    code = "unknown_method"


class UnsupportedMethodError(InvalidConfigError):
    """The method exists but cannot run on this model's family (e.g. a trained method without training ops)."""

    code = "method_unsupported"


class NoMatchingModuleError(ErasureError, ValueError):
    """A model family names a layer the loaded model does not have."""

    code = "no_matching_module"


class IncompatibleAdapterError(ErasureError):
    """An erasure was computed for another base model (layer hash or shapes differ)."""

    code = "incompatible_erasure"


class ArtifactError(ErasureError):
    """An erasure file is missing, truncated, not safetensors, or its metadata is invalid."""

    code = "invalid_artifact"


class AdapterNotFoundError(ErasureError, KeyError):
    code = "erasure_not_found"


class ModelLoadError(ErasureError):
    code = "model_load_failed"


class ExpansionError(ErasureError):
    """Concept expansion through an external LLM endpoint failed."""

    code = "expansion_failed"


class InvalidLoraError(ArtifactError):
    """A LoRA given for import is not safetensors, names a module the base model lacks, or has a bad shape or
    value (the message names the offending key)."""

    code = "invalid_lora"
