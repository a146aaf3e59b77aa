"""ICE: Instant Concept Erasure (arXiv 2511.18684), built on CURE's spectral eraser (arXiv 2505.12677)."""

from erasure_core.methods.base import register_method
from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.method import ICE

register_method(ICE())

__all__ = ["ICE", "ICEConfig"]
