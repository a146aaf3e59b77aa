"""Built-in erasure methods; importing this package registers them."""

from erasure_core.methods import eraseanything, ice, uce  # noqa: F401
from erasure_core.methods.base import ErasureMethod, MethodContext, get_method, method_names, register_method

__all__ = ["ErasureMethod", "MethodContext", "get_method", "method_names", "register_method"]
