"""Every corpus format reads into the same samples, categories and corpus indices."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from maxact.corpus import CorpusError, builtin_path, load_corpus
from maxact.corpus.readers import open_source

DOCS = [
    ("Prime numbers never run out.", "math_science"),
    ("def f(x):\n    return x * 2", "code"),
    ("机器学习是人工智能的一个分支。", "chinese"),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def expected_ids(tokenizer, texts):
    return [tokenizer(t)["input_ids"] for t in texts]


def test_pretokenized_jsonl_used_as_stored(tmp_path, tokenizer):
    rows = [{"input_ids": [5, 6, 7]}, {"input_ids": [9] * 10, "category": "code"}]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    for tok in (None, tokenizer):  # a tokenizer must not add a BOS to stored ids
        corpus = load_corpus(path, tok)
        assert [s.input_ids.tolist() for s in corpus] == [r["input_ids"] for r in rows]
        assert [s.category for s in corpus] == [None, "code"]
        assert corpus.categories == {"code": 1}
        assert corpus.num_tokens == 13
        assert corpus.samples[0].input_ids.dtype == np.int32


def test_text_jsonl_with_categories(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": t, "category": c} for t, c in DOCS])
    corpus = load_corpus(path, tokenizer)
    assert [s.input_ids.tolist() for s in corpus] == expected_ids(tokenizer, [t for t, _ in DOCS])
    assert [s.sample_id for s in corpus] == [0, 1, 2]
    assert [s.corpus_index for s in corpus] == [0, 1, 2]
    assert corpus.categories == {"math_science": 1, "code": 1, "chinese": 1}
    assert corpus.category_codes().tolist() == [0, 1, 2]
    assert corpus.locate(1) == f"{path}:2"


def test_gzipped_jsonl(tmp_path, tokenizer):
    path = tmp_path / "text.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for t, c in DOCS:
            f.write(json.dumps({"text": t, "category": c}, ensure_ascii=False) + "\n")
    corpus = load_corpus(path, tokenizer)
    assert [s.input_ids.tolist() for s in corpus] == expected_ids(tokenizer, [t for t, _ in DOCS])


def test_parquet_text_and_ids(tmp_path, tokenizer):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    text_path = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in DOCS], "category": [c for _, c in DOCS]}), text_path)
    corpus = load_corpus(text_path, tokenizer)
    assert [s.input_ids.tolist() for s in corpus] == expected_ids(tokenizer, [t for t, _ in DOCS])
    assert [s.category for s in corpus] == [c for _, c in DOCS]
    assert corpus.locate(2) == f"{text_path} row 2"

    ids_path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], [4, 5]], "max_tokens": [2, None]}), ids_path)
    corpus = load_corpus(ids_path)
    assert [s.input_ids.tolist() for s in corpus] == [[1, 2], [4, 5]]


def test_parquet_without_text_column_is_an_error(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(CorpusError, match=r"no 'text' or 'input_ids' column \(columns: body\)"):
        load_corpus(path)


def test_text_folder_categories_from_subfolders(tmp_path, tokenizer):
    root = tmp_path / "docs"
    (root / "code").mkdir(parents=True)
    (root / "zh").mkdir()
    (root / "code" / "b.txt").write_text("def g(): pass", encoding="utf-8")
    (root / "code" / "a.txt").write_text("int main(void) { return 0; }", encoding="utf-8")
    (root / "zh" / "x.txt").write_text("长江是中国第一长河。", encoding="utf-8")
    (root / "top.txt").write_text("A document without a category.", encoding="utf-8")
    (root / "notes.md").write_text("not a .txt file", encoding="utf-8")
    corpus = load_corpus(root, tokenizer)
    # sorted by relative path: code/a, code/b, top, zh/x
    assert [s.category for s in corpus] == ["code", "code", None, "zh"]
    assert corpus.samples[0].input_ids.tolist() == tokenizer("int main(void) { return 0; }")["input_ids"]
    assert corpus.locate(3) == str(root / "zh" / "x.txt")
    assert corpus.category_codes().tolist() == [0, 0, -1, 1]

    single = load_corpus(root / "top.txt", tokenizer)
    assert single.num_samples == 1 and single.samples[0].category is None


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(tmp_path / "empty")


def test_saved_dataset_and_split(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in DOCS], "category": [c for _, c in DOCS]})
    ds.save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(tmp_path / "ds", tokenizer)
    assert [s.input_ids.tolist() for s in corpus] == expected_ids(tokenizer, [t for t, _ in DOCS])
    assert corpus.categories == {"math_science": 1, "code": 1, "chinese": 1}

    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(tmp_path / "dd", tokenizer).num_samples == 3  # "train" by default
    test = load_corpus(f"{tmp_path / 'dd'}@test", tokenizer)
    assert [s.category for s in test] == ["chinese"]
    with pytest.raises(CorpusError, match="no split 'dev'"):
        load_corpus(f"{tmp_path / 'dd'}@dev", tokenizer)


def test_missing_path_is_a_one_line_error(tmp_path):
    for spec in (tmp_path / "nope.jsonl", "./no/such/dir", "/definitely/not/here"):
        with pytest.raises(CorpusError) as info:
            load_corpus(spec)
        assert str(info.value) == f"corpus not found: {spec}"
        assert "\n" not in str(info.value)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        open_source(path)


def test_builtin_corpus(tokenizer):
    path = builtin_path()
    assert path.exists() and path.stat().st_size < 1_000_000
    corpus = load_corpus("builtin", tokenizer)  # also the default spec
    assert load_corpus(tokenizer=tokenizer).hash == corpus.hash
    assert 40 <= corpus.num_samples <= 60
    assert set(corpus.categories) == {"math_science", "code", "english_web", "knowledge", "chinese",
                                      "other_languages", "mixed_web"}
    assert min(corpus.categories.values()) >= 5
    assert corpus.num_empty == 0 and corpus.num_bad_lines == 0
    assert corpus.locate(0) == "builtin:1"
    # Interleaved order: the first 7 samples cover all 7 categories.
    assert len({s.category for s in corpus.samples[:7]}) == 7
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in rows)
