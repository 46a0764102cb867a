"""Shared helpers of the scan tests (imported by name; conftest.py holds only fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_corpus(path: Path, lengths, *, vocab: int = 256, seed: int = 0, categories=("math", "code", "web"),
                 extra_lines=()) -> Path:
    """A JSONL corpus of random token ids (ids >= 3: no special tokens) with the given lengths."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i, n in enumerate(lengths):
            rec = {"input_ids": rng.integers(3, vocab, int(n)).tolist(), "category": categories[i % len(categories)]}
            fh.write(json.dumps(rec) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path
