"""Where polymodal keeps files between runs: under `$POLYMODAL_CACHE` (default ~/.cache/polymodal)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("POLYMODAL_CACHE", Path.home() / ".cache" / "polymodal"))


def default_cache_dir() -> Path:
    """The frozen-encoder feature cache (`encoders/cache.py`) unless a run names another folder."""
    return cache_root() / "features"
