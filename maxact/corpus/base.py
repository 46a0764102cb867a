"""The corpus data types every later stage reads: `Sample`, `TokenizedCorpus`, `CorpusError`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np


class CorpusError(Exception):
    """A corpus that cannot be read: missing path, malformed record, unusable format.

    The message is one line that names the file (and line or row) so a CLI can print it as is.
    """


@dataclass(frozen=True, eq=False)
class Sample:
    """One token sequence of a corpus.

    sample_id: position in the loaded corpus, 0..N-1 in corpus order (after empty and bad records
        were skipped); the id every statistic refers to.
    input_ids: 1-D np.int32 (np.int64 when an id does not fit) token ids, already truncated.
    category: the record's category label, or None.
    corpus_index: index of the source record (JSONL line number from 0, Parquet / dataset row,
        position in the sorted file list of a text folder); `TokenizedCorpus.locate` turns it into
        "file:line".
    """

    sample_id: int
    input_ids: np.ndarray
    category: str | None = None
    corpus_index: int = -1

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def __len__(self) -> int:
        return self.num_tokens


@dataclass(eq=False)
class TokenizedCorpus:
    """Token sequences ready for batching, plus what a results file needs to identify them.

    hash: content hash of the corpus source + tokenizer identity + max_seq_len + number of samples
        (what a resumed scan must match). source_hash: hash of the source content alone.
    source: the spec as given ("builtin", a path, a dataset name, "synthetic:N:seed").
    num_empty / num_bad_lines: records skipped as empty documents / malformed lines.
    num_truncated: samples cut to max_seq_len (records' own "max_tokens" cuts are not counted).
    record_names: for sources made of several files (a text folder), the file of each corpus_index.
    """

    samples: list[Sample]
    hash: str
    source: str
    source_hash: str = ""
    tokenizer_id: str | None = None
    max_seq_len: int | None = None
    num_empty: int = 0
    num_bad_lines: int = 0
    num_truncated: int = 0
    record_names: Sequence[str] | None = None
    _categories: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def num_tokens(self) -> int:
        return int(sum(s.num_tokens for s in self.samples))

    @property
    def categories(self) -> dict[str, int]:
        """{category: sample count}, in order of first appearance; unlabelled samples are not listed."""
        if self._categories is None:
            counts: dict[str, int] = {}
            for s in self.samples:
                if s.category is not None:
                    counts[s.category] = counts.get(s.category, 0) + 1
            self._categories = counts
        return self._categories

    @property
    def category_names(self) -> list[str]:
        return list(self.categories)

    def category_codes(self) -> np.ndarray:
        """np.int32[N]: index of each sample's category in `category_names`, -1 when unlabelled."""
        index = {name: i for i, name in enumerate(self.category_names)}
        return np.array([index.get(s.category, -1) for s in self.samples], dtype=np.int32)

    def lengths(self) -> np.ndarray:
        """np.int64[N]: tokens per sample."""
        return np.array([s.num_tokens for s in self.samples], dtype=np.int64)

    def corpus_indices(self) -> np.ndarray:
        """np.int64[N]: source record index of each sample."""
        return np.array([s.corpus_index for s in self.samples], dtype=np.int64)

    def locate(self, sample_id: int) -> str:
        """Where a sample's text lives: "file:line" (JSONL, 1-based), "file:row N", or the file name."""
        idx = self.samples[sample_id].corpus_index
        if self.record_names is not None:
            return str(self.record_names[idx])
        if self.source.startswith("synthetic:"):
            return f"{self.source} sample {idx}"
        if self.source.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")) or self.source == "builtin":
            return f"{self.source}:{idx + 1}"
        return f"{self.source} row {idx}"

    def metadata(self) -> dict:
        """The `corpus` block of stats.json (docs/CONTRACTS.md section 4), plus skip counters."""
        return {
            "path": self.source,
            "hash": self.hash,
            "source_hash": self.source_hash,
            "tokenizer": self.tokenizer_id,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "categories": dict(self.categories),
            "max_seq_len": self.max_seq_len,
            "num_empty": self.num_empty,
            "num_bad_lines": self.num_bad_lines,
            "num_truncated": self.num_truncated,
        }


def corpus_hash(source_hash: str, tokenizer_id: str | None, max_seq_len: int | None, num_samples: int) -> str:
    """The identity of a loaded corpus: equal hashes mean equal token sequences (given the same code)."""
    key = f"{source_hash}|{tokenizer_id}|{max_seq_len}|{num_samples}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]
