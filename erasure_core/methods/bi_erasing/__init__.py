"""Bi-Erasing (arXiv 2512.13039): bidirectional image-guided erasure, on Co-Erasing's Flux implementation."""

from erasure_core.methods.base import register_method
from erasure_core.methods.bi_erasing.config import BiErasingConfig
from erasure_core.methods.bi_erasing.method import BiErasing

register_method(BiErasing())

__all__ = ["BiErasing", "BiErasingConfig"]
