"""Where the core keeps what it builds on disk (assembled demo worlds, the lexicon's encodings and indexes)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`ERASURE_CACHE_DIR`, else ~/.cache/erasure: the cache root when the caller names none (the service always
    names its settings' `cache_dir`)."""
    return Path(os.environ.get("ERASURE_CACHE_DIR", Path.home() / ".cache" / "erasure"))
