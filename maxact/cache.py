"""Where maxact keeps its caches (tokenized corpora, converted GGUF models): one root for all of them."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MAXACT_CACHE`` if set, else ``~/.cache/maxact``."""
    env = os.environ.get("MAXACT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maxact"
