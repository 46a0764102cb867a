"""Fixtures of the scan tests: tiny pre-tokenized corpora and a scan runner with a capture probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


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


@pytest.fixture
def corpus_file(tmp_path):
    # Mixed lengths so batches carry padding; 9 samples, 3 categories.
    return write_corpus(tmp_path / "corpus.jsonl", [9, 14, 5, 14, 7, 3, 11, 14, 6])


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Token caches of the corpus module go to the test's folder, never to ~/.cache.
    monkeypatch.setenv("MAXACT_CACHE", str(tmp_path / "cache"))
