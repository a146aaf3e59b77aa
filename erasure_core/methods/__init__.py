"""Built-in erasure methods; importing this package registers them (import `get_method` from here)."""

from erasure_core.methods import bi_erasing, co_erasing, eraseanything, ice, imported, uce  # noqa: F401
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress, get_method, register_method

__all__ = ["ErasureMethod", "MethodContext", "Progress", "get_method", "register_method"]
