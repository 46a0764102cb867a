"""Synthetic token corpus: the paper's length distribution, determinism, categories, spec parsing."""

from __future__ import annotations

import numpy as np
import pytest

from maxact.corpus import RECIPE_QUOTAS, load_corpus, synthetic_corpus
from maxact.corpus.synthetic import parse_synthetic_spec, synthetic_lengths


@pytest.fixture(scope="module")
def paper_corpus():
    return synthetic_corpus(5000, vocab_size=1000, seed=0)


def test_paper_length_distribution(paper_corpus):
    lengths = paper_corpus.lengths()
    assert len(lengths) == 5000
    assert abs(lengths.mean() - 3899) / 3899 < 0.02
    assert paper_corpus.num_tokens == 19_494_400  # about 19.5M, exactly, for any seed
    values, counts = np.unique(lengths, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {256: 50, 512: 50, 1024: 100, 2048: 150, 4096: 4650}
    assert np.array_equal(synthetic_lengths(5000, seed=0), lengths)


def test_categories_cycle_in_recipe_proportions(paper_corpus):
    assert paper_corpus.categories == RECIPE_QUOTAS
    first = [s.category for s in paper_corpus.samples[:1000]]
    for bucket, quota in RECIPE_QUOTAS.items():
        assert abs(first.count(bucket) - quota / 5) <= 1


def test_ids_and_identity(paper_corpus):
    s = paper_corpus.samples[17]
    assert s.sample_id == 17 and s.corpus_index == 17 and s.input_ids.dtype == np.int32
    assert all(int(x.input_ids.max()) < 1000 and int(x.input_ids.min()) >= 0 for x in paper_corpus.samples[:50])
    assert paper_corpus.source == "synthetic:5000:0"


def test_deterministic_per_seed():
    a = synthetic_corpus(50, vocab_size=100, seed=5)
    b = synthetic_corpus(50, vocab_size=100, seed=5)
    c = synthetic_corpus(50, vocab_size=100, seed=6)
    assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, b))
    assert a.hash == b.hash != c.hash
    assert any(not np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


def test_max_seq_len_caps():
    corpus = synthetic_corpus(200, vocab_size=100, seed=1, max_seq_len=1000)
    lengths = corpus.lengths()
    assert lengths.max() == 1000
    assert corpus.num_truncated == int((synthetic_lengths(200, seed=1, max_seq_len=None) > 1000).sum())


def test_load_corpus_spec():
    corpus = load_corpus("synthetic:100:3", vocab_size=64)
    direct = synthetic_corpus(100, vocab_size=64, seed=3)
    assert corpus.hash == direct.hash
    prefix = load_corpus("synthetic:100:3", vocab_size=64, max_samples=10, max_seq_len=512)
    assert prefix.num_samples == 10
    capped = synthetic_corpus(100, vocab_size=64, seed=3, max_seq_len=512)
    assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(prefix, capped))
    assert prefix.num_truncated == int((synthetic_lengths(100, seed=3, max_seq_len=None)[:10] > 512).sum())
    assert parse_synthetic_spec("synthetic") == (5000, 0)
    assert parse_synthetic_spec("synthetic:7") == (7, 0)
