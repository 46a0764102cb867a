"""Fixtures for the corpus tests: tiny tokenizers and a private token cache per test."""

from __future__ import annotations

import pytest
from corpus_helpers import CountingTokenizer, make_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def counting_tokenizer():
    tok = make_tokenizer(cls=CountingTokenizer)
    tok.calls = []
    return tok


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own $MAXACT_CACHE so nothing touches ~/.cache."""
    root = tmp_path / "maxact-cache"
    monkeypatch.setenv("MAXACT_CACHE", str(root))
    return root
