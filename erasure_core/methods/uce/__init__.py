"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), the closed-form baseline."""

from erasure_core.methods.base import register_method
from erasure_core.methods.uce.method import UCE, UCEConfig

register_method(UCE())

__all__ = ["UCE", "UCEConfig"]
