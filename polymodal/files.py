"""File helpers every floor uses: content hashes (model ids, run-folder manifests, index ids)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, read in blocks (hashlib has no file helper before Python 3.11's
    `hashlib.file_digest`, which this project cannot require yet)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
