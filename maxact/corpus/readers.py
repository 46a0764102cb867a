"""Corpus source formats: each reader yields `Record`s in source order and hashes the source content.

Formats (see `open_source`):
- JSONL (`.jsonl`, `.json`, optionally `.gz`): one JSON object per line, `{"input_ids": [...]}` (the
  layout of the paper's released data) or `{"text": "..."}`, each with optional `"category"` and
  `"max_tokens"`. Whitespace-only lines are not records. `corpus_index` = 0-based line number.
- Parquet (`.parquet`, `.pq`): columns `text` or `input_ids`, optional `category`, `max_tokens`.
  `corpus_index` = row.
- A folder of `.txt` files (searched recursively, sorted by relative path): one document per file,
  category = the first-level subfolder name, None for files directly in the folder. `corpus_index` =
  position in that sorted list. A single `.txt` file is a one-document corpus.
- A `datasets` dataset: a folder written by `save_to_disk` (`datasets.load_from_disk`), or a name for
  `datasets.load_dataset` (`hf:NAME`, or any non-path string), optionally `@SPLIT` (default: "train",
  or the only split). Same columns as Parquet. `corpus_index` = row.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .base import CorpusError

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SUFFIX = ".txt"
BUILTIN_NAME = "builtin"
BUILTIN_FILE = "builtin.jsonl"
_HASH_CHUNK = 1 << 20
# Files `datasets.save_to_disk` writes; their presence marks a folder as a saved dataset.
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Record:
    """One source record: either text (to tokenize) or input_ids (used as is)."""

    index: int
    text: str | None = None
    input_ids: np.ndarray | None = None
    category: str | None = None
    max_tokens: int | None = None

    @property
    def is_empty(self) -> bool:
        if self.input_ids is not None:
            return self.input_ids.shape[0] == 0
        return self.text is None or not self.text.strip()


class BadRecords:
    """What to do with a malformed record: raise `CorpusError` (default) or skip and count it."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.count = 0
        self.first: str | None = None

    def __call__(self, location: str, reason: str) -> None:
        message = f"{location}: {reason}"
        if not self.skip:
            raise CorpusError(message)
        self.count += 1
        if self.first is None:
            self.first = message
        logger.debug("skipping bad record %s", message)


def builtin_path() -> Path:
    """Path of the corpus shipped with maxact (maxact/corpus/data/builtin.jsonl)."""
    return Path(str(resources.files("maxact.corpus") / "data" / BUILTIN_FILE))


def as_token_array(ids: Any) -> np.ndarray:
    """A list of non-negative ints as a 1-D int32 array (int64 if needed); ValueError otherwise."""
    try:
        arr = np.asarray(ids)
    except ValueError as e:  # ragged nested lists
        raise ValueError("input_ids is not a flat list of integers") from e
    if arr.ndim != 1:
        raise ValueError("input_ids is not a flat list of integers")
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be integers, got {arr.dtype.name} values")
    if int(arr.min()) < 0:
        raise ValueError("input_ids has negative ids")
    return arr.astype(np.int32 if int(arr.max()) < 2**31 else np.int64, copy=False)


def record_from_row(row: Any, index: int, location: str, on_bad: BadRecords) -> Record | None:
    """Validate one row (a dict) into a Record; report problems to `on_bad` and return None."""
    if not isinstance(row, dict):
        on_bad(location, f"expected a JSON object, got {type(row).__name__}")
        return None
    ids, text = row.get("input_ids"), row.get("text")
    arr = None
    if ids is not None:
        try:
            arr = as_token_array(ids)
        except ValueError as e:
            on_bad(location, str(e))
            return None
    elif text is not None:
        if not isinstance(text, str):
            on_bad(location, f"'text' must be a string, got {type(text).__name__}")
            return None
    elif "text" not in row and "input_ids" not in row:
        on_bad(location, "no 'text' or 'input_ids' field")
        return None
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        category = str(category)  # integer labels are fine, kept as their string
    max_tokens = row.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        on_bad(location, f"'max_tokens' must be a positive integer, got {max_tokens!r}")
        return None
    return Record(index=index, text=text if arr is None else None, input_ids=arr,
                  category=category, max_tokens=max_tokens)


def _hash_files(paths: list[Path], root: Path | None, tag: str) -> str:
    h = hashlib.sha256(tag.encode())
    for p in paths:
        name = p.relative_to(root).as_posix() if root is not None else ""
        h.update(f"\0{name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


class CorpusReader(ABC):
    """A corpus source: display name, content hash and records in order."""

    source: str
    record_names: list[str] | None = None

    @abstractmethod
    def content_hash(self) -> str:
        """sha256 hex of the source content (not of its path)."""

    @abstractmethod
    def records(self, on_bad: BadRecords) -> Iterator[Record]:
        """Records in source order; malformed ones go to `on_bad` (which raises or counts)."""


class JsonlReader(CorpusReader):
    def __init__(self, path: Path, source: str | None = None):
        self.path = path
        self.source = source or str(path)

    def content_hash(self) -> str:
        return _hash_files([self.path], None, "jsonl")

    def records(self, on_bad: BadRecords) -> Iterator[Record]:
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rb") as f:
            for lineno, raw in enumerate(f):
                if not raw.strip():
                    continue
                location = f"{self.source}:{lineno + 1}"
                try:
                    row = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                    on_bad(location, f"malformed JSON ({reason})")
                    continue
                rec = record_from_row(row, lineno, location, on_bad)
                if rec is not None:
                    yield rec


def _check_columns(names: list[str], source: str) -> list[str]:
    if "text" not in names and "input_ids" not in names:
        raise CorpusError(f"{source}: no 'text' or 'input_ids' column (columns: {', '.join(names)})")
    return [c for c in ("input_ids", "text", "category", "max_tokens") if c in names]


class ParquetReader(CorpusReader):
    def __init__(self, path: Path):
        self.path = path
        self.source = str(path)

    def content_hash(self) -> str:
        return _hash_files([self.path], None, "parquet")

    def records(self, on_bad: BadRecords) -> Iterator[Record]:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise CorpusError("reading Parquet needs pyarrow: pip install 'maxact[datasets]'") from e
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CorpusError(f"{self.source}: not a readable Parquet file ({e})") from e
        columns = _check_columns(pf.schema_arrow.names, self.source)
        index = 0
        for batch in pf.iter_batches(columns=columns, batch_size=1024):
            for row in batch.to_pylist():
                rec = record_from_row(row, index, f"{self.source} row {index}", on_bad)
                index += 1
                if rec is not None:
                    yield rec


class TextFolderReader(CorpusReader):
    """Every .txt file under a folder (or one .txt file), one document each."""

    def __init__(self, path: Path):
        self.root = path if path.is_dir() else path.parent
        self.files = (sorted((p for p in path.rglob("*" + TEXT_SUFFIX) if p.is_file()),
                             key=lambda p: p.relative_to(self.root).as_posix())
                      if path.is_dir() else [path])
        if not self.files:
            raise CorpusError(f"{path}: no .txt files, and not a saved `datasets` folder")
        self.source = str(path)
        self.record_names = [str(p) for p in self.files]

    def content_hash(self) -> str:
        return _hash_files(self.files, self.root, "txt")

    def records(self, on_bad: BadRecords) -> Iterator[Record]:
        for index, p in enumerate(self.files):
            parts = p.relative_to(self.root).parts
            category = parts[0] if len(parts) > 1 else None
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                on_bad(str(p), f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            yield Record(index=index, text=text, category=category)


class DatasetReader(CorpusReader):
    """A Hugging Face `datasets` dataset, from a `save_to_disk` folder or `load_dataset(name)`."""

    def __init__(self, name: str, split: str | None, from_disk: bool):
        try:
            import datasets
        except ImportError as e:
            raise CorpusError(f"{name}: reading a `datasets` corpus needs: pip install 'maxact[datasets]'") from e
        self.source = name if split is None else f"{name}@{split}"
        try:
            if from_disk:
                ds = datasets.load_from_disk(name)
            else:
                ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # hub, network and format errors all become one line
            what = "not a readable saved dataset" if from_disk else "not a local path, and datasets.load_dataset failed"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CorpusError(f"corpus not found: {name} ({what}: {reason})") from e
        if isinstance(ds, datasets.DatasetDict):
            ds = self._pick_split(ds, name, split)
        self.dataset = ds
        self.columns = _check_columns(list(ds.column_names), self.source)

    @staticmethod
    def _pick_split(dd: Any, name: str, split: str | None) -> Any:
        if split is not None:
            if split not in dd:
                raise CorpusError(f"{name}: no split {split!r} (splits: {', '.join(dd)})")
            return dd[split]
        if "train" in dd:
            return dd["train"]
        if len(dd) == 1:
            return next(iter(dd.values()))
        raise CorpusError(f"{name}: several splits ({', '.join(dd)}); choose one with {name}@SPLIT")

    def content_hash(self) -> str:
        files = [Path(f["filename"]) for f in (self.dataset.cache_files or [])]
        if files and all(p.exists() for p in files):
            h = _hash_files(files, None, "datasets")
            return hashlib.sha256(f"{h}|{self.columns}|{len(self.dataset)}".encode()).hexdigest()
        # An in-memory dataset has no files: hash its rows.
        h = hashlib.sha256(b"datasets-rows")
        for batch in self.dataset.select_columns(self.columns).iter(batch_size=1000):
            h.update(json.dumps(batch, sort_keys=True, ensure_ascii=False, default=str).encode())
        return h.hexdigest()

    def records(self, on_bad: BadRecords) -> Iterator[Record]:
        index = 0
        for batch in self.dataset.select_columns(self.columns).iter(batch_size=1000):
            n = len(batch[self.columns[0]])
            for i in range(n):
                row = {c: batch[c][i] for c in self.columns}
                rec = record_from_row(row, index, f"{self.source} row {index}", on_bad)
                index += 1
                if rec is not None:
                    yield rec


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or os.sep in spec and Path(spec).suffix != ""
            or spec.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES + (TEXT_SUFFIX,)))


def open_source(spec: str | os.PathLike) -> CorpusReader:
    """The reader for a corpus spec: "builtin", a file, a folder, `hf:NAME[@SPLIT]` or a dataset name."""
    spec = os.fspath(spec)
    if spec == BUILTIN_NAME:
        return JsonlReader(builtin_path(), source=BUILTIN_NAME)
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition("@")
        return DatasetReader(name, split or None, from_disk=False)
    path = Path(spec).expanduser()
    if not path.exists() and "@" in spec and Path(spec.rpartition("@")[0]).expanduser().is_dir():
        base, _, split = spec.rpartition("@")
        return DatasetReader(str(Path(base).expanduser()), split, from_disk=True)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(JSONL_SUFFIXES):
            return JsonlReader(path)
        if name.endswith(PARQUET_SUFFIXES):
            return ParquetReader(path)
        if name.endswith(TEXT_SUFFIX):
            return TextFolderReader(path)
        raise CorpusError(f"{spec}: unknown corpus format (expected .jsonl, .json, .parquet, .txt or a folder)")
    if path.is_dir():
        if any((path / m).exists() for m in _DATASET_MARKERS):
            return DatasetReader(str(path), None, from_disk=True)
        return TextFolderReader(path)
    if _looks_like_path(spec):
        raise CorpusError(f"corpus not found: {spec}")
    name, _, split = spec.partition("@")
    return DatasetReader(name, split or None, from_disk=False)
