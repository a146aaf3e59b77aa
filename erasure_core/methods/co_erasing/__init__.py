"""Co-Erasing (arXiv 2505.11131): image-guided erasure, on EraseAnything++'s Flux LoRA recipe."""

from erasure_core.methods.base import register_method
from erasure_core.methods.co_erasing.config import CoErasingConfig
from erasure_core.methods.co_erasing.method import CoErasing

register_method(CoErasing())

__all__ = ["CoErasing", "CoErasingConfig"]
