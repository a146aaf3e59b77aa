"""Import: an existing Flux LoRA (diffusers/peft or kohya keys) becomes an ordinary erasure."""

from erasure_core.methods.base import register_method
from erasure_core.methods.imported.method import ImportConfig, ImportLora

register_method(ImportLora())

__all__ = ["ImportConfig", "ImportLora"]
