"""Fixtures of the scan tests: tiny pre-tokenized corpora and a scan runner with a capture probe."""

from __future__ import annotations

import pytest
from scan_helpers import write_corpus


@pytest.fixture
def corpus_file(tmp_path):
    # Mixed lengths so batches carry padding; 9 samples, 3 categories.
    return write_corpus(tmp_path / "corpus.jsonl", [9, 14, 5, 14, 7, 3, 11, 14, 6])


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Token caches of the corpus module go to the test's folder, never to ~/.cache.
    monkeypatch.setenv("MAXACT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _greedy_batches(monkeypatch):
    """Pack batches by token budget alone so these tiny corpora produce padded rows (the default 1 %
    padding cap would give every odd-length sample its own batch), exercising the row masks."""
    from maxact import batching
    from maxact.scan import pipeline

    def make(corpus, config, pad_token_id):
        return batching.make_batches(corpus, config.tokens_per_batch, pad_token_id=pad_token_id or 0,
                                     max_padding=None)

    monkeypatch.setattr(pipeline, "make_batches", make)
