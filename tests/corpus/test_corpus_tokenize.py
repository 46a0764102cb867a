"""Tokenize once per tokenizer: cache hits, cache keys, truncation, special tokens, hashes."""

from __future__ import annotations

import json
import shutil

import numpy as np

from maxact.corpus import load_corpus, tokenizer_identity
from maxact.corpus.tokenize import PROBE_STRINGS, TokenCache, cache_root

from corpus_helpers import CountingTokenizer, make_tokenizer

TEXTS = ["alpha beta gamma " * 5, "return a + b", "长江是中国第一长河。", "El agua está en movimiento."]


def write_corpus(path, texts=TEXTS, **extra):
    rows = [{"text": t, "category": f"c{i % 2}", **extra} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def document_calls(tok):
    """Encode calls other than the identity probes."""
    return [c for c in tok.calls if c != list(PROBE_STRINGS)]


def test_second_load_hits_the_cache(tmp_path, counting_tokenizer, private_cache):
    path = write_corpus(tmp_path / "c.jsonl")
    first = load_corpus(path, counting_tokenizer)
    assert sum(len(c) for c in document_calls(counting_tokenizer)) == len(TEXTS)
    cache_files = list((private_cache / "tokens").glob("*.npz"))
    assert len(cache_files) == 1
    assert not list((private_cache / "tokens").glob("*.tmp"))  # atomic write left nothing behind

    counting_tokenizer.calls.clear()
    second = load_corpus(path, counting_tokenizer)
    assert document_calls(counting_tokenizer) == []  # no document was tokenized again
    assert [s.input_ids.tolist() for s in second] == [s.input_ids.tolist() for s in first]
    assert [s.category for s in second] == [s.category for s in first]
    assert second.hash == first.hash


def test_cache_is_keyed_by_content_and_tokenizer(tmp_path, private_cache):
    path = write_corpus(tmp_path / "c.jsonl")
    tok_a = make_tokenizer(320, name="tok-a", cls=CountingTokenizer)
    tok_b = make_tokenizer(300, name="tok-b", cls=CountingTokenizer)
    for tok in (tok_a, tok_b):
        tok.calls = []
    a = load_corpus(path, tok_a)
    b = load_corpus(path, tok_b)
    assert document_calls(tok_b)  # another tokenizer is not served tok_a's ids
    assert tokenizer_identity(tok_a) != tokenizer_identity(tok_b)
    assert a.hash != b.hash and a.source_hash == b.source_hash
    assert len(list((private_cache / "tokens").glob("*.npz"))) == 2

    # Same content elsewhere: same source hash, cache hit.
    copy = tmp_path / "elsewhere" / "copy.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    tok_a.calls.clear()
    c = load_corpus(copy, tok_a)
    assert document_calls(tok_a) == []
    assert c.hash == a.hash

    # Changed content: miss.
    write_corpus(path, TEXTS + ["one more document"])
    tok_a.calls.clear()
    d = load_corpus(path, tok_a)
    assert document_calls(tok_a) and d.num_samples == 5 and d.hash != a.hash


def test_cache_dir_argument_and_no_cache(tmp_path, counting_tokenizer, private_cache):
    path = write_corpus(tmp_path / "c.jsonl")
    load_corpus(path, counting_tokenizer, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("*.npz"))) == 1
    assert not (private_cache / "tokens").exists()
    load_corpus(path, counting_tokenizer, use_cache=False)
    assert not (private_cache / "tokens").exists()
    assert cache_root() == private_cache


def test_unreadable_cache_file_is_ignored(tmp_path, counting_tokenizer, private_cache):
    path = write_corpus(tmp_path / "c.jsonl")
    first = load_corpus(path, counting_tokenizer)
    (cache_file,) = (private_cache / "tokens").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    counting_tokenizer.calls.clear()
    again = load_corpus(path, counting_tokenizer)
    assert document_calls(counting_tokenizer)
    assert [s.input_ids.tolist() for s in again] == [s.input_ids.tolist() for s in first]


def test_one_bos_and_truncation(tmp_path, tokenizer):
    path = write_corpus(tmp_path / "c.jsonl")
    full = load_corpus(path, tokenizer)
    bos = tokenizer.bos_token_id
    for s, text in zip(full, TEXTS):
        assert s.input_ids.tolist() == tokenizer(text)["input_ids"]
        assert s.input_ids[0] == bos and (s.input_ids == bos).sum() == 1
    longest = int(full.lengths().max())
    cut = load_corpus(path, tokenizer, max_seq_len=8)
    assert cut.lengths().max() == 8
    assert cut.num_truncated == int((full.lengths() > 8).sum()) > 0
    for a, b in zip(cut, full):
        np.testing.assert_array_equal(a.input_ids, b.input_ids[:8])
    assert cut.hash != full.hash and load_corpus(path, tokenizer, max_seq_len=longest).num_truncated == 0


def test_record_max_tokens_cuts_per_tokenizer(tmp_path, tokenizer):
    path = write_corpus(tmp_path / "c.jsonl", max_tokens=5)
    corpus = load_corpus(path, tokenizer)
    for s, text in zip(corpus, TEXTS):
        assert s.input_ids.tolist() == tokenizer(text)["input_ids"][:5]
    assert corpus.num_truncated == 0  # record cuts are not max_seq_len truncations


def test_max_samples_is_a_prefix(tmp_path, tokenizer):
    path = write_corpus(tmp_path / "c.jsonl")
    full = load_corpus(path, tokenizer)
    two = load_corpus(path, tokenizer, max_samples=2)
    assert [s.sample_id for s in two] == [0, 1]
    assert [s.input_ids.tolist() for s in two] == [s.input_ids.tolist() for s in full.samples[:2]]
    assert two.hash != full.hash
    assert load_corpus(path, tokenizer, max_samples=0).num_samples == 0


def test_metadata_block(tmp_path, tokenizer):
    path = write_corpus(tmp_path / "c.jsonl")
    meta = load_corpus(path, tokenizer).metadata()
    assert meta["path"] == str(path)
    assert meta["num_samples"] == 4
    assert meta["num_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert meta["categories"] == {"c0": 2, "c1": 2}
    assert len(meta["hash"]) == 16


def test_cache_roundtrip_keeps_dtypes(tmp_path, tokenizer):
    path = write_corpus(tmp_path / "c.jsonl")
    corpus = load_corpus(path, tokenizer, cache_dir=tmp_path / "cc")
    cache = TokenCache(tmp_path / "cc")
    tr = cache.load(corpus.source_hash, corpus.tokenizer_id)
    assert tr is not None and tr.corpus_index.dtype == np.int64
    assert all(x.dtype == np.int32 for x in tr.ids)
    assert tr.categories == ["c0", "c1", "c0", "c1"]
