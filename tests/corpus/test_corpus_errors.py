"""Bad input: malformed lines name file and line, can be skipped and counted; empty documents are
skipped and counted; sample ids stay dense and corpus indices point at the source lines."""

from __future__ import annotations

import json
import re

import pytest

from maxact.corpus import CorpusError, load_corpus

GOOD_A = json.dumps({"text": "first document", "category": "a"})
GOOD_B = json.dumps({"text": "second document", "category": "b"})


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad, reason", [
    ('{"text": "unterminated', "malformed JSON"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('{"body": "no text field"}', "no 'text' or 'input_ids' field"),
    ('{"text": 42}', "'text' must be a string, got int"),
    ('{"input_ids": [1, 2.5]}', "input_ids must be integers"),
    ('{"input_ids": [1, -2]}', "negative ids"),
    ('{"input_ids": [[1], [2, 3]]}', "flat list of integers"),
    ('{"text": "x", "max_tokens": 0}', "'max_tokens' must be a positive integer"),
])
def test_malformed_line_names_file_and_line(tmp_path, tokenizer, bad, reason):
    path = write_lines(tmp_path / "c.jsonl", [GOOD_A, GOOD_B, bad, GOOD_A])
    with pytest.raises(CorpusError) as info:
        load_corpus(path, tokenizer)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: ")
    assert reason in msg
    assert "\n" not in msg


def test_skip_bad_lines_counts_and_keeps_indices(tmp_path, tokenizer):
    lines = [GOOD_A, "not json", "", GOOD_B, '{"text": 1}', "   ", GOOD_A]
    path = write_lines(tmp_path / "c.jsonl", lines)
    corpus = load_corpus(path, tokenizer, skip_bad_lines=True)
    assert corpus.num_bad_lines == 2
    assert corpus.num_empty == 0  # blank lines are not records
    assert [s.sample_id for s in corpus] == [0, 1, 2]
    assert [s.corpus_index for s in corpus] == [0, 3, 6]
    assert [corpus.locate(i) for i in range(3)] == [f"{path}:1", f"{path}:4", f"{path}:7"]


def test_cached_bad_lines_still_fail_without_skip(tmp_path, tokenizer):
    path = write_lines(tmp_path / "c.jsonl", [GOOD_A, "{broken", GOOD_B])
    assert load_corpus(path, tokenizer, skip_bad_lines=True).num_bad_lines == 1  # writes the cache
    with pytest.raises(CorpusError, match="^" + re.escape(f"{path}:2: malformed JSON")):
        load_corpus(path, tokenizer)


def test_empty_documents_are_skipped_and_counted(tmp_path, tokenizer):
    lines = [
        json.dumps({"text": ""}),
        GOOD_A,
        json.dumps({"text": "  \n\t "}),
        json.dumps({"text": None}),
        json.dumps({"input_ids": []}),
        GOOD_B,
    ]
    path = write_lines(tmp_path / "c.jsonl", lines)
    corpus = load_corpus(path, tokenizer)
    assert corpus.num_empty == 4
    assert corpus.num_bad_lines == 0
    assert [s.corpus_index for s in corpus] == [1, 5]
    assert [s.category for s in corpus] == ["a", "b"]


def test_empty_text_file_in_folder_is_counted(tmp_path, tokenizer):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("", encoding="utf-8")
    (tmp_path / "d" / "b.txt").write_text("words here", encoding="utf-8")
    (tmp_path / "d" / "c.txt").write_bytes(b"\xff\xfe not utf-8 \xc3")
    with pytest.raises(CorpusError, match=r"c\.txt: not UTF-8 text"):
        load_corpus(tmp_path / "d", tokenizer)
    corpus = load_corpus(tmp_path / "d", tokenizer, skip_bad_lines=True)
    assert (corpus.num_samples, corpus.num_empty, corpus.num_bad_lines) == (1, 1, 1)
    assert corpus.samples[0].corpus_index == 1


def test_text_without_tokenizer_is_an_error(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [GOOD_A])
    with pytest.raises(CorpusError, match="text records need a tokenizer"):
        load_corpus(path)


def test_bad_arguments(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"input_ids": [1, 2]})])
    with pytest.raises(CorpusError, match="max_seq_len"):
        load_corpus(path, max_seq_len=0)
    with pytest.raises(CorpusError, match="max_samples"):
        load_corpus(path, max_samples=-1)
    with pytest.raises(CorpusError, match="synthetic:N"):
        load_corpus("synthetic:many")
