"""Tokenize a corpus once per tokenizer and cache the token ids on disk.

Special tokens: text is encoded with the tokenizer's own default (`tokenizer(texts)`, i.e.
`add_special_tokens=True` for Hugging Face tokenizers): Llama / Gemma tokenizers prepend their BOS,
Qwen's add nothing. maxact never adds a BOS itself, so none is added twice. Pre-tokenized
`input_ids` are used exactly as stored. A record's "max_tokens" cut is applied to the encoded ids
(BOS included), so the text stays fixed and each tokenizer keeps its own first max_tokens tokens.

Cache: one `.npz` per (corpus content hash, tokenizer identity) under `cache_root()/tokens/`
(`$MAXACT_CACHE`, default `~/.cache/maxact`), written atomically (temporary file + rename). It holds
the ids after "max_tokens" cuts and before `max_seq_len`, so any `max_seq_len` reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maxact.cache import cache_root

from .readers import BadRecords, CorpusReader, Record
from .base import CorpusError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
ENCODE_CHUNK = 256
# Short strings whose encodings fingerprint a tokenizer's vocabulary, normalizer and special-token
# policy: two tokenizers that agree on all of them are treated as the same for caching.
PROBE_STRINGS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces\tand\ttabs\nnew line, numbers 1234567890 3.14159",
    "def f(x):\n    return x ** 2  # code",
    "机器学习是人工智能的一个分支。",
    "Überprüfung, naïve café, ¿qué tal? नमस्ते こんにちは",
    "emoji 🙂🚀 and symbols <>&{}[]|\\~^",
)


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Encode texts with the tokenizer's default special-token behaviour, as int32 arrays."""
    if not texts:
        return []
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
        # verbose=False: long documents are expected here; we truncate ourselves.
        out = tokenizer(list(texts), verbose=False, return_attention_mask=False)
    else:
        out = tokenizer(list(texts))
    ids = out["input_ids"]
    if len(ids) != len(texts):
        raise CorpusError(f"tokenizer returned {len(ids)} sequences for {len(texts)} texts")
    return [np.asarray(x, dtype=np.int32) for x in ids]


def tokenizer_identity(tokenizer: Any) -> str:
    """"name|vocab|hash": name_or_path, vocabulary size and a hash of the probe encodings."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    try:
        vocab = len(tokenizer)
    except TypeError:
        vocab = getattr(tokenizer, "vocab_size", -1)
    probes = [x.tolist() for x in encode_texts(tokenizer, PROBE_STRINGS)]
    digest = hashlib.sha256(json.dumps([type(tokenizer).__name__, name, vocab, probes]).encode())
    return f"{name}|{vocab}|{digest.hexdigest()[:16]}"


@dataclass
class TokenizedRecords:
    """Token ids of every non-empty record, in source order, plus skip counters."""

    ids: list[np.ndarray]
    corpus_index: np.ndarray
    categories: list[str | None]
    num_empty: int = 0
    num_bad: int = 0
    first_bad: str | None = None
    meta: dict = field(default_factory=dict)


def _cut(ids: np.ndarray, max_tokens: int | None) -> np.ndarray:
    return ids if max_tokens is None or ids.shape[0] <= max_tokens else ids[:max_tokens]


def tokenize_records(reader: CorpusReader, tokenizer: Any, *, skip_bad_lines: bool) -> TokenizedRecords:
    """Read every record of a source and turn it into token ids (text is encoded in chunks)."""
    on_bad = BadRecords(skip_bad_lines)
    records: list[Record] = []
    num_empty = 0
    for rec in reader.records(on_bad):
        if rec.is_empty:
            num_empty += 1
            continue
        records.append(rec)
    texts = [r for r in records if r.input_ids is None]
    if texts and tokenizer is None:
        raise CorpusError(f"{reader.source}: text records need a tokenizer (pass the model's tokenizer)")
    for start in range(0, len(texts), ENCODE_CHUNK):
        chunk = texts[start:start + ENCODE_CHUNK]
        for rec, ids in zip(chunk, encode_texts(tokenizer, [r.text for r in chunk])):
            rec.input_ids = ids
        if len(texts) > ENCODE_CHUNK:
            logger.info("tokenized %d / %d documents", min(start + ENCODE_CHUNK, len(texts)), len(texts))
    kept = []
    for rec in records:
        ids = _cut(rec.input_ids, rec.max_tokens)
        if ids.shape[0] == 0:  # text that encodes to nothing (no BOS, only stripped characters)
            num_empty += 1
            continue
        kept.append((rec, ids))
    if num_empty:
        logger.info("%s: skipped %d empty documents", reader.source, num_empty)
    if on_bad.count:
        logger.warning("%s: skipped %d malformed records (first: %s)", reader.source, on_bad.count, on_bad.first)
    return TokenizedRecords(
        ids=[ids for _, ids in kept],
        corpus_index=np.array([r.index for r, _ in kept], dtype=np.int64),
        categories=[r.category for r, _ in kept],
        num_empty=num_empty, num_bad=on_bad.count, first_bad=on_bad.first)


class TokenCache:
    """On-disk cache of `TokenizedRecords`, one file per (source hash, tokenizer identity)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else cache_root() / "tokens"

    def path(self, source_hash: str, tokenizer_id: str | None) -> Path:
        tok = hashlib.sha256(f"v{CACHE_VERSION}|{tokenizer_id}".encode()).hexdigest()[:16]
        return self.directory / f"{source_hash[:24]}-{tok}.npz"

    def load(self, source_hash: str, tokenizer_id: str | None) -> TokenizedRecords | None:
        path = self.path(source_hash, tokenizer_id)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                if (meta.get("version") != CACHE_VERSION or meta.get("source_hash") != source_hash
                        or meta.get("tokenizer_id") != tokenizer_id):
                    return None
                flat, offsets = z["ids"], z["offsets"]
                codes, corpus_index = z["category_codes"], z["corpus_index"]
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable token cache %s (%s)", path, e)
            return None
        names = meta["category_names"]
        ids = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        logger.info("token cache hit: %s", path)
        return TokenizedRecords(
            ids=ids, corpus_index=corpus_index,
            categories=[names[c] if c >= 0 else None for c in codes.tolist()],
            num_empty=meta["num_empty"], num_bad=meta["num_bad"], first_bad=meta["first_bad"], meta=meta)

    def save(self, source_hash: str, tokenizer_id: str | None, tr: TokenizedRecords) -> Path | None:
        path = self.path(source_hash, tokenizer_id)
        names: list[str] = []
        index: dict[str, int] = {}
        for c in tr.categories:
            if c is not None and c not in index:
                index[c] = len(names)
                names.append(c)
        meta = {"version": CACHE_VERSION, "source_hash": source_hash, "tokenizer_id": tokenizer_id,
                "category_names": names, "num_empty": tr.num_empty, "num_bad": tr.num_bad,
                "first_bad": tr.first_bad, **tr.meta}
        lengths = np.array([x.shape[0] for x in tr.ids], dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(tr.ids) if tr.ids else np.zeros(0, dtype=np.int32)
        arrays = {
            "ids": flat, "offsets": offsets, "corpus_index": tr.corpus_index,
            "category_codes": np.array([index[c] if c is not None else -1 for c in tr.categories], dtype=np.int32),
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=path.stem, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:  # a read-only or full disk must not stop a scan
            logger.warning("could not write token cache %s (%s)", path, e)
            return None
        return path


def check_vocab(tr: TokenizedRecords, tokenizer: Any, source: str) -> None:
    """Warn when pre-tokenized ids do not fit the tokenizer's vocabulary (ids of another family?)."""
    if tokenizer is None or not tr.ids:
        return
    try:
        vocab = len(tokenizer)
    except TypeError:
        return
    top = max((int(x.max()) for x in tr.ids if x.shape[0]), default=-1)
    if top >= vocab:
        logger.warning("%s: token id %d >= tokenizer vocabulary size %d; were these ids made by another tokenizer?",
                       source, top, vocab)


