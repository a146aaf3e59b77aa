"""EraseAnything++ (arXiv 2603.00978), building on EraseAnything (arXiv 2412.20413)."""

from erasure_core.methods.base import register_method
from erasure_core.methods.eraseanything.config import EraseAnythingConfig
from erasure_core.methods.eraseanything.method import EraseAnything

register_method(EraseAnything())

__all__ = ["EraseAnything", "EraseAnythingConfig"]
