"""The paper's recipe: quotas, scaling, category mapping, target lengths, determinism, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from maxact.corpus import RECIPE_QUOTAS, CorpusError, build_recipe, load_corpus
from maxact.corpus.__main__ import main
from maxact.corpus.recipe import (TARGET_LENGTHS, assign_lengths, category_table, interleave_categories,
                                  largest_remainder, scale_quotas)

# Source labels as a RedPajama-style dump would have them, mapped by the default table.
SOURCE_LABELS = {"arxiv": 60, "github": 60, "c4": 100, "wikipedia": 40, "stackexchange": 30, "zh": 30,
                 "sw": 12, "hi": 12, "mixed": 20, "weird_label": 5}


def write_source(path, labels=SOURCE_LABELS, with_empty=True):
    rows = []
    for label, n in labels.items():
        rows += [{"text": f"{label} document number {i}.", "category": label} for i in range(n)]
    if with_empty:
        rows.append({"text": "", "category": "c4"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_quotas_scale_by_largest_remainder():
    assert scale_quotas(5000) == RECIPE_QUOTAS
    assert sum(RECIPE_QUOTAS.values()) == 5000
    for total in (1, 7, 100, 999, 1000, 2000, 12345):
        q = scale_quotas(total)
        assert sum(q.values()) == total
        for bucket, n in q.items():
            assert abs(n - RECIPE_QUOTAS[bucket] * total / 5000) < 1
    assert scale_quotas(1000) == {"math_science": 170, "code": 170, "english_web": 170, "knowledge": 170,
                                  "chinese": 80, "other_languages": 60, "mixed_web": 180}
    with pytest.raises(CorpusError):
        scale_quotas(0)
    assert largest_remainder([1, 1, 1], 2) == [1, 1, 0]  # ties go to the earlier entry


def test_target_lengths_have_exact_proportions():
    rng = np.random.default_rng(0)
    lengths = assign_lengths(5000, rng)
    values, counts = np.unique(lengths, return_counts=True)
    assert values.tolist() == list(TARGET_LENGTHS)
    assert counts.tolist() == [50, 50, 100, 150, 4650]
    assert lengths.mean() == pytest.approx(3898.88)
    assert not np.array_equal(lengths, np.sort(lengths))  # shuffled
    assert np.array_equal(assign_lengths(5000, np.random.default_rng(0)), lengths)


def test_interleaved_categories_stay_proportional():
    cats = interleave_categories(5000)
    assert {c: cats.count(c) for c in RECIPE_QUOTAS} == RECIPE_QUOTAS
    prefix = interleave_categories(5000)[:500]
    for bucket, quota in RECIPE_QUOTAS.items():
        assert abs(prefix.count(bucket) - quota / 10) <= 1


def test_build_fills_quotas_and_is_deterministic(tmp_path):
    src = write_source(tmp_path / "src.jsonl")
    res = build_recipe(src, seed=3, total=100)
    assert res.quotas == scale_quotas(100)
    assert res.drawn == res.quotas and res.shortfall == {}
    assert res.unmapped == {"weird_label": 5}
    assert res.num_empty == 1
    cats = [r["category"] for r in res.records]
    assert {b: cats.count(b) for b in RECIPE_QUOTAS} == res.quotas
    # Sources land in the right buckets; knowledge mixes wikipedia and stackexchange.
    pairs = {(r["source_category"], r["category"]) for r in res.records}
    assert ("arxiv", "math_science") in pairs and ("github", "code") in pairs and ("zh", "chinese") in pairs
    assert {s for s, b in pairs if b == "other_languages"} <= {"sw", "hi"}
    assert {s for s, b in pairs if b == "knowledge"} <= {"wikipedia", "stackexchange"}
    # mixed_web takes all 20 mixed records plus English web records english_web left over.
    mixed_sources = [r["source_category"] for r in res.records if r["category"] == "mixed_web"]
    assert len(mixed_sources) == 18 and set(mixed_sources) <= {"mixed", "c4"}
    # Every source record is used at most once, and its text is the source text.
    keys = [(r["source_category"], r["source_index"]) for r in res.records]
    assert len(set(keys)) == len(keys)
    assert all(r["text"].startswith(r["source_category"]) for r in res.records)
    lengths = sorted(r["max_tokens"] for r in res.records)
    assert lengths == [256, 512, 1024, 1024, 2048, 2048, 2048] + [4096] * 93

    again = build_recipe(src, seed=3, total=100)
    assert again.records == res.records
    other = build_recipe(src, seed=4, total=100)
    assert other.records != res.records


def test_shortfall_warns_or_fails(tmp_path, caplog):
    src = write_source(tmp_path / "src.jsonl", {"arxiv": 3, "github": 50, "c4": 50})
    with caplog.at_level(logging.WARNING):
        res = build_recipe(src, total=100)
    assert res.drawn["math_science"] == 3 and res.shortfall["math_science"] == 14
    assert res.drawn["chinese"] == 0 and res.shortfall["chinese"] == 8
    assert len(res.records) == sum(res.drawn.values())
    assert "short by" in caplog.text
    with pytest.raises(CorpusError, match="short by math_science 14"):
        build_recipe(src, total=100, strict=True)


def test_category_map_overrides(tmp_path):
    src = write_source(tmp_path / "src.jsonl")
    res = build_recipe(src, total=100, category_map={"Weird-Label": "code"})
    assert res.unmapped == {}
    assert any(r["source_category"] == "weird_label" and r["category"] == "code" for r in res.records)
    with pytest.raises(CorpusError, match="not a recipe bucket"):
        category_table({"x": "poetry"})


def test_recipe_needs_text(tmp_path):
    src = tmp_path / "ids.jsonl"
    src.write_text(json.dumps({"input_ids": [1, 2], "category": "code"}) + "\n")
    with pytest.raises(CorpusError, match="needs text"):
        build_recipe(src, total=10)


def test_cli_build_then_tokenize(tmp_path, tokenizer, capsys):
    src = write_source(tmp_path / "src.jsonl")
    out = tmp_path / "out" / "eval.jsonl"
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"weird_label": "mixed_web"}))
    assert main(["build", "--source", str(src), "--out", str(out), "--seed", "1", "--total", "50",
                 "--category-map", str(cmap)]) == 0
    table = capsys.readouterr().out
    assert "math_science" in table and "wrote 50 records" in table
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 50 and {"text", "category", "max_tokens"} <= set(rows[0])
    # The target length is applied at tokenization time, per tokenizer.
    rows[0]["max_tokens"] = 3
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = load_corpus(out, tokenizer)
    assert corpus.samples[0].num_tokens == 3
    assert sum(corpus.categories.values()) == 50

    assert main(["build", "--source", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "corpus not found" in capsys.readouterr().err
    assert main(["build", "--source", str(src), "--out", str(out), "--category-map", "{bad json"]) == 2


def test_cli_synthetic_and_info(tmp_path, capsys):
    out = tmp_path / "syn.jsonl"
    assert main(["synthetic", "--num-samples", "20", "--vocab-size", "50", "--seed", "2",
                 "--max-seq-len", "300", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all(len(r["input_ids"]) <= 300 for r in rows)
    assert all(max(r["input_ids"]) < 50 for r in rows)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total" in text and str(sum(len(r["input_ids"]) for r in rows)) in text
