"""Batching: token budget, padding on the paper's lengths, row views, split, rank sharding."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from maxact.batching import Batch, collate, make_batches, plan_batches, shard_samples
from maxact.corpus import Sample, synthetic_corpus

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def paper_corpus():
    return synthetic_corpus(5000, vocab_size=1000, seed=0)


def random_samples(n, seed=0, max_len=300, vocab=50):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    return [Sample(sample_id=i, input_ids=rng.integers(0, vocab, size=int(L)).astype(np.int32),
                   category=None, corpus_index=i) for i, L in enumerate(lengths)]


@pytest.mark.parametrize("tokens_per_batch", [4096, 16384, 32768, 65536])
def test_padding_under_one_percent_on_paper_lengths(paper_corpus, tokens_per_batch):
    batches = make_batches(paper_corpus, tokens_per_batch)
    frac = batches.padding_fraction
    logger.info("tokens_per_batch=%d: %d batches, padding %.4f%% of B*T", tokens_per_batch, len(batches),
                100 * frac)
    assert batches.num_tokens == paper_corpus.num_tokens
    assert frac < 0.01, f"padding {frac:.4%} with tokens_per_batch={tokens_per_batch}"
    pad = batches.padded_tokens - batches.num_tokens
    assert pad / batches.num_tokens < 0.01
    for plan in batches.plans:
        assert plan.padded_tokens <= tokens_per_batch


@pytest.mark.parametrize("tokens_per_batch", [8192, 32768, 131072])
def test_padding_bounded_on_any_lengths(tokens_per_batch):
    # Sparse, continuous lengths: the hard case for length grouping.
    samples = random_samples(2000, max_len=4096)
    batches = make_batches(samples, tokens_per_batch)
    greedy = make_batches(samples, tokens_per_batch, max_padding=None)
    logger.info("uniform lengths, tokens_per_batch=%d: padding %.3f%% in %d batches (greedy: %.3f%% in %d)",
                tokens_per_batch, 100 * batches.padding_fraction, len(batches),
                100 * greedy.padding_fraction, len(greedy))
    for plan in batches.plans:
        real = sum(samples[k].num_tokens for k in plan.indices)
        assert plan.padded_tokens - real <= 0.01 * plan.padded_tokens
        assert plan.padded_tokens <= tokens_per_batch
    assert batches.padding_fraction < 0.01
    # Early closes happen at most once per 1 % fall in length: bounded, whatever the corpus size.
    assert len(batches) <= len(greedy) + 840
    assert greedy.padding_fraction >= batches.padding_fraction


def test_paper_lengths_batch_count_matches_greedy(paper_corpus):
    capped = make_batches(paper_corpus, 32768)
    greedy = make_batches(paper_corpus, 32768, max_padding=None)
    assert len(capped) <= len(greedy) + 2
    assert capped.padding_fraction <= greedy.padding_fraction


def test_every_sample_once_and_rows_sorted():
    samples = random_samples(300, seed=1)
    batches = make_batches(samples, 1000, max_batch_rows=7)
    seen = []
    for plan in batches.plans:
        ids = [samples[k].sample_id for k in plan.indices]
        assert ids == sorted(ids)
        assert plan.rows <= 7 and plan.padded_tokens <= 1000
        assert plan.seq_len == max(samples[k].num_tokens for k in plan.indices)
        seen += ids
    assert sorted(seen) == list(range(300))
    # Deterministic, and longest batches first.
    again = make_batches(samples, 1000, max_batch_rows=7)
    assert [p.indices for p in again.plans] == [p.indices for p in batches.plans]
    seq = [p.seq_len for p in batches.plans]
    assert seq == sorted(seq, reverse=True)


def test_sample_longer_than_budget_gets_its_own_batch():
    samples = random_samples(20, seed=2, max_len=50)
    samples.append(Sample(sample_id=20, input_ids=np.arange(500, dtype=np.int32)))
    plans = plan_batches([s.num_tokens for s in samples], 100, max_padding=None)
    big = [p for p in plans if 20 in p.indices]
    assert len(big) == 1 and big[0].indices == (20,) and big[0].seq_len == 500
    assert all(p.padded_tokens <= 100 for p in plans if p is not big[0])


def test_batch_tensors_and_row_views():
    samples = random_samples(40, seed=3, max_len=30)
    batches = make_batches(samples, 200, pad_token_id=7)
    for batch in batches:
        B, T = batch.input_ids.shape
        assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.sample_ids.dtype == torch.int64
        assert B * T <= 200
        mask, sids, pos = batch.row_mask(), batch.row_sample_ids(), batch.row_positions()
        assert mask.dtype == torch.bool and mask.shape == sids.shape == pos.shape == (B * T,)
        assert batch.row_mask() is mask  # cached
        exp_mask, exp_sids, exp_pos = [], [], []
        for r, sid in enumerate(batch.sample_ids.tolist()):
            ids = samples[sid].input_ids
            L = len(ids)
            assert batch.input_ids[r, :L].tolist() == ids.tolist()
            assert (batch.input_ids[r, L:] == 7).all()
            assert batch.attention_mask[r].tolist() == [1] * L + [0] * (T - L)
            exp_mask += [True] * L + [False] * (T - L)
            exp_sids += [sid] * L + [-1] * (T - L)
            exp_pos += list(range(T))
        assert mask.tolist() == exp_mask and sids.tolist() == exp_sids and pos.tolist() == exp_pos
        assert batch.num_tokens == int(mask.sum())


def test_split_halves():
    samples = random_samples(5, seed=4, max_len=40)
    batch = collate(samples, pad_token_id=0)
    a, b = batch.split()
    assert a.batch_size == 3 and b.batch_size == 2
    assert torch.cat([a.sample_ids, b.sample_ids]).tolist() == batch.sample_ids.tolist()
    assert a.num_tokens + b.num_tokens == batch.num_tokens
    for half in (a, b):
        lengths = half.attention_mask.sum(1)
        assert half.seq_len == int(lengths.max())  # trimmed to its own longest row
        for r, sid in enumerate(half.sample_ids.tolist()):
            L = samples[sid].num_tokens
            assert half.input_ids[r, :L].tolist() == samples[sid].input_ids.tolist()
    # The real tokens of the halves, in (sample, position) order, are those of the whole batch.
    whole = batch.input_ids.reshape(-1)[batch.row_mask()]
    parts = torch.cat([h.input_ids.reshape(-1)[h.row_mask()] for h in (a, b)])
    assert torch.equal(whole, parts)
    whole_ids = batch.row_sample_ids()[batch.row_mask()]
    part_ids = torch.cat([h.row_sample_ids()[h.row_mask()] for h in (a, b)])
    assert torch.equal(whole_ids, part_ids)
    one, _ = a.split()
    with pytest.raises(ValueError):
        collate(samples[:1]).split()
    assert one.batch_size == 2


def test_to_device_keeps_content():
    batch = collate(random_samples(3, seed=5))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.row_sample_ids(), batch.row_sample_ids())


def test_bad_budget():
    with pytest.raises(ValueError):
        plan_batches([3, 4], 0)
    with pytest.raises(ValueError):
        plan_batches([3, 0], 10)
    with pytest.raises(ValueError):
        plan_batches([3], 10, max_batch_rows=0)
    with pytest.raises(ValueError):
        plan_batches([3], 10, max_padding=1.0)
    assert plan_batches([], 10) == []


def test_shard_samples_balanced_and_complete(paper_corpus):
    world = 8
    shards = [shard_samples(paper_corpus, r, world) for r in range(world)]
    ids = sorted(s.sample_id for shard in shards for s in shard)
    assert ids == list(range(5000))
    for shard in shards:
        assert [s.sample_id for s in shard] == sorted(s.sample_id for s in shard)
    loads = [sum(s.num_tokens for s in shard) for shard in shards]
    assert max(loads) - min(loads) <= 4096  # at most one sample's length
    assert (max(loads) - min(loads)) / (sum(loads) / world) < 0.002
    assert [s.sample_id for s in shard_samples(paper_corpus, 3, world)] == [s.sample_id for s in shards[3]]


def test_shard_samples_fewer_samples_than_ranks():
    samples = random_samples(3, seed=6)
    shards = [shard_samples(samples, r, 5) for r in range(5)]
    assert sorted(len(s) for s in shards) == [0, 0, 1, 1, 1]
    assert sorted(s.sample_id for shard in shards for s in shard) == [0, 1, 2]
    assert shard_samples(samples, 0, 1) == sorted(samples, key=lambda s: s.sample_id)
    with pytest.raises(ValueError):
        shard_samples(samples, 5, 5)
