"""Synthetic token corpus with the paper's length distribution, for throughput work.

Lengths: 256 / 512 / 1024 / 2048 / 4096 in exactly the proportions 1 / 1 / 2 / 3 / 93 % (largest
remainder), in a seeded random order, each capped at max_seq_len. 5,000 samples therefore hold
19,494,400 tokens (mean 3,898.9) for every seed, so throughput runs compare across seeds.
Token ids: uniform over [0, vocab_size), one vectorised numpy draw. Categories: the recipe's
buckets in recipe proportions, interleaved so any prefix is proportional.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .recipe import RECIPE_TOTAL, assign_lengths, interleave_categories
from .base import CorpusError, Sample, TokenizedCorpus, corpus_hash

SYNTHETIC_PREFIX = "synthetic"


def synthetic_lengths(num_samples: int, seed: int = 0, max_seq_len: int | None = 4096) -> np.ndarray:
    """np.int64[num_samples] sample lengths, as `synthetic_corpus` makes them (without the ids);
    max_seq_len=None gives the target lengths before the cap."""
    target = assign_lengths(num_samples, np.random.default_rng(seed))
    return target if max_seq_len is None else np.minimum(target, max_seq_len)


def synthetic_corpus(num_samples: int = RECIPE_TOTAL, vocab_size: int = 32000, seed: int = 0,
                     max_seq_len: int = 4096) -> TokenizedCorpus:
    """A `TokenizedCorpus` of random token ids with the paper's length distribution.

    vocab_size: ids are drawn from [0, vocab_size); pass the model's `config.vocab_size`
    (the default, 32000, is Llama-2's, the tokenizer of the paper's source data).
    """
    if num_samples < 0:
        raise CorpusError(f"synthetic corpus: num_samples must be >= 0, got {num_samples}")
    if vocab_size < 1:
        raise CorpusError(f"synthetic corpus: vocab_size must be >= 1, got {vocab_size}")
    if max_seq_len < 1:
        raise CorpusError(f"synthetic corpus: max_seq_len must be >= 1, got {max_seq_len}")
    # One generator for lengths then ids, so the whole corpus is a function of the seed.
    rng = np.random.default_rng(seed)
    target = assign_lengths(num_samples, rng)
    lengths = np.minimum(target, max_seq_len)
    offsets = np.zeros(num_samples + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(0, vocab_size, size=int(offsets[-1]), dtype=np.int32)
    cats = interleave_categories(num_samples)
    samples = [Sample(sample_id=i, input_ids=ids[offsets[i]:offsets[i + 1]], category=cats[i], corpus_index=i)
               for i in range(num_samples)]
    source = f"{SYNTHETIC_PREFIX}:{num_samples}:{seed}"
    source_hash = hashlib.sha256(f"{source}|vocab={vocab_size}|v1".encode()).hexdigest()
    tokenizer_id = f"synthetic|{vocab_size}"
    num_truncated = int(np.count_nonzero(target > max_seq_len))
    return TokenizedCorpus(samples=samples, hash=corpus_hash(source_hash, tokenizer_id, max_seq_len, num_samples),
                           source=source, source_hash=source_hash, tokenizer_id=tokenizer_id,
                           max_seq_len=max_seq_len, num_truncated=num_truncated)


def parse_synthetic_spec(spec: str) -> tuple[int, int]:
    """"synthetic", "synthetic:N" or "synthetic:N:SEED" -> (N, seed)."""
    parts = spec.split(":")
    if parts[0] != SYNTHETIC_PREFIX or len(parts) > 3:
        raise CorpusError(f"bad synthetic corpus spec {spec!r}; expected synthetic:N[:SEED]")
    try:
        n = int(parts[1]) if len(parts) > 1 and parts[1] else RECIPE_TOTAL
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError as e:
        raise CorpusError(f"bad synthetic corpus spec {spec!r}; expected synthetic:N[:SEED]") from e
    return n, seed
