"""`load_corpus`: any supported corpus spec -> `TokenizedCorpus` (tokenized once, cached)."""

from __future__ import annotations

import logging
import os
from typing import Any

from .readers import open_source
from .synthetic import SYNTHETIC_PREFIX, parse_synthetic_spec, synthetic_corpus, synthetic_lengths
from .tokenize import TokenCache, check_vocab, tokenize_records, tokenizer_identity
from .base import CorpusError, Sample, TokenizedCorpus, corpus_hash

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "builtin"


def load_corpus(spec: str | os.PathLike = DEFAULT_CORPUS, tokenizer: Any = None, *, max_seq_len: int = 4096,
                max_samples: int | None = None, skip_bad_lines: bool = False,
                cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                vocab_size: int | None = None) -> TokenizedCorpus:
    """Load a corpus as token ids.

    spec: "builtin" (the shipped corpus, default), a `.jsonl` / `.json[.gz]` file (`{"input_ids"}` or
        `{"text"}` lines, optional "category" and "max_tokens"), a `.parquet` file, a folder of `.txt`
        files (category = subfolder), a saved `datasets` folder, `hf:NAME[@SPLIT]` or a dataset name,
        or "synthetic:N[:SEED]" (random ids with the paper's length distribution).
    tokenizer: needed for text; called as `tokenizer(texts)` with its default special tokens (see
        `maxact.corpus.tokenize`). Pre-tokenized ids are used as stored.
    max_seq_len: every sample is cut to at most this many tokens.
    max_samples: keep the first N samples in corpus order (after empty / bad records are skipped).
    skip_bad_lines: skip and count malformed records instead of raising `CorpusError` (file:line).
    cache_dir: folder for the token cache files (default `$MAXACT_CACHE/tokens`, `~/.cache/maxact/tokens`);
        use_cache=False neither reads nor writes it.
    vocab_size: for synthetic corpora, ids are drawn below it (default: len(tokenizer), else 32000).
    """
    spec = os.fspath(spec)
    if max_seq_len < 1:
        raise CorpusError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if max_samples is not None and max_samples < 0:
        raise CorpusError(f"max_samples must be >= 0, got {max_samples}")
    if spec == SYNTHETIC_PREFIX or spec.startswith(SYNTHETIC_PREFIX + ":"):
        return _load_synthetic(spec, tokenizer, max_seq_len, max_samples, vocab_size)

    reader = open_source(spec)
    tokenizer_id = tokenizer_identity(tokenizer) if tokenizer is not None else None
    source_hash = reader.content_hash()
    cache = TokenCache(cache_dir) if use_cache else None
    tr = cache.load(source_hash, tokenizer_id) if cache is not None else None
    if tr is None:
        tr = tokenize_records(reader, tokenizer, skip_bad_lines=skip_bad_lines)
        if cache is not None:
            cache.save(source_hash, tokenizer_id, tr)
    elif tr.num_bad and not skip_bad_lines:
        # The cache was written by a run that skipped bad lines; this one must fail the same way
        # a fresh read would.
        raise CorpusError(tr.first_bad or f"{reader.source}: malformed records")
    check_vocab(tr, tokenizer, reader.source)

    n = len(tr.ids) if max_samples is None else min(max_samples, len(tr.ids))
    samples, num_truncated = [], 0
    for i in range(n):
        ids = tr.ids[i]
        if ids.shape[0] > max_seq_len:
            ids = ids[:max_seq_len]
            num_truncated += 1
        samples.append(Sample(sample_id=i, input_ids=ids, category=tr.categories[i],
                              corpus_index=int(tr.corpus_index[i])))
    corpus = TokenizedCorpus(
        samples=samples, hash=corpus_hash(source_hash, tokenizer_id, max_seq_len, n), source=reader.source,
        source_hash=source_hash, tokenizer_id=tokenizer_id, max_seq_len=max_seq_len,
        num_empty=tr.num_empty, num_bad_lines=tr.num_bad, num_truncated=num_truncated,
        record_names=reader.record_names)
    logger.info("corpus %s: %d samples, %d tokens, %d empty and %d bad records skipped, %d truncated to %d",
                corpus.source, corpus.num_samples, corpus.num_tokens, corpus.num_empty, corpus.num_bad_lines,
                num_truncated, max_seq_len)
    return corpus


def _load_synthetic(spec: str, tokenizer: Any, max_seq_len: int, max_samples: int | None,
                    vocab_size: int | None) -> TokenizedCorpus:
    n, seed = parse_synthetic_spec(spec)
    if vocab_size is None:
        vocab_size = len(tokenizer) if tokenizer is not None else 32000
    corpus = synthetic_corpus(n, vocab_size=vocab_size, seed=seed, max_seq_len=max_seq_len)
    if max_samples is not None and max_samples < n:
        corpus = TokenizedCorpus(
            samples=corpus.samples[:max_samples],
            hash=corpus_hash(corpus.source_hash, corpus.tokenizer_id, max_seq_len, max_samples),
            source=corpus.source, source_hash=corpus.source_hash, tokenizer_id=corpus.tokenizer_id,
            max_seq_len=max_seq_len,
            num_truncated=int((synthetic_lengths(n, seed, max_seq_len=None)[:max_samples] > max_seq_len).sum()))
    return corpus
