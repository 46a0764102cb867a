"""Provenance of top-k entries (issue 8, item 4): a massive activation planted in a tiny random model
(one embedding row made large) is found with its site, layer, sample, position, channel, token id,
context and corpus record; the decoded text when a tokenizer exists; the report's table shows it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maxact.corpus.base import Sample, TokenizedCorpus
from maxact.scan import ScanConfig, pipeline
from maxact.scan.provenance import MARK_CLOSE, MARK_OPEN, Decoder, token_record, topk_provenance
from maxact.scan.runner import scan

PLANT_ID, PLANT_CHANNEL, PLANT_VALUE = 250, 7, 3000.0
PLANT_SAMPLE, PLANT_POSITION = 2, 5


def planted_corpus(path, lengths=(9, 12, 10, 6, 8)):
    """JSONL of token ids in [3, 200); PLANT_ID only at (PLANT_SAMPLE, PLANT_POSITION). Returns the ids."""
    rng = np.random.default_rng(1)
    ids = [rng.integers(3, 200, n).tolist() for n in lengths]
    ids[PLANT_SAMPLE][PLANT_POSITION] = PLANT_ID
    with open(path, "w", encoding="utf-8") as fh:
        for i, row in enumerate(ids):
            fh.write(json.dumps({"input_ids": row, "category": ("a", "b")[i % 2]}) + "\n")
    return ids


@pytest.fixture
def planted_scan(tmp_path, monkeypatch):
    ids = planted_corpus(tmp_path / "planted.jsonl")
    real_load = pipeline.load_model

    def load_planted(config, device):
        model = real_load(config, device)
        with torch.no_grad():   # one embedding entry far above everything else: the top-1 everywhere
            model.model.get_input_embeddings().weight[PLANT_ID, PLANT_CHANNEL] = PLANT_VALUE
        return model

    monkeypatch.setattr(pipeline, "load_model", load_planted)
    cfg = ScanConfig(model="random:tiny-qwen3", corpus=str(tmp_path / "planted.jsonl"), device="cpu",
                     dtype="float32", backend="reference", tokens_per_batch=24, topk=4,
                     out=str(tmp_path / "out"), progress=False)
    scan(cfg)
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    return doc, ids, tmp_path / "out"


def test_planted_activation_carries_its_provenance(planted_scan):
    doc, ids, _ = planted_scan
    top = doc["sites"]["embedding"]["topk"][0]
    assert top["abs"] == PLANT_VALUE and top["value"] == PLANT_VALUE
    assert (top["sample"], top["position"], top["channel"]) == (PLANT_SAMPLE, PLANT_POSITION, PLANT_CHANNEL)
    assert top["site"] == "embedding" and top["layer"] is None
    assert top["token_id"] == PLANT_ID
    # 4 tokens before, 2 after, straight from the corpus row
    assert top["context_start"] == PLANT_POSITION - 4
    assert top["context_ids"] == ids[PLANT_SAMPLE][PLANT_POSITION - 4: PLANT_POSITION + 3]
    assert top["corpus_index"] == PLANT_SAMPLE and top["source"].endswith(f"planted.jsonl:{PLANT_SAMPLE + 1}")
    assert top["token"] is None and top["context"] is None      # random model: no tokenizer, ids only
    # every top-k entry of every site names its own site and layer and the token at its location
    for name, site in doc["sites"].items():
        for e in site["topk"]:
            assert e["site"] == name and e["layer"] == site["layer"]
            assert e["token_id"] == ids[e["sample"]][e["position"]]
            lo = e["context_start"]
            assert e["context_ids"] == ids[e["sample"]][lo: e["position"] + 3] and e["position"] - lo <= 4


def test_residual_stream_carries_the_planted_token(planted_scan):
    doc, _, _ = planted_scan
    hidden = doc["sites"]["layers.0.hidden"]["topk"][0]
    assert hidden["layer"] == 0 and hidden["site"] == "layers.0.hidden"
    assert (hidden["sample"], hidden["position"], hidden["token_id"]) == (PLANT_SAMPLE, PLANT_POSITION, PLANT_ID)


def test_report_shows_the_provenance_table(planted_scan, tmp_path):
    from maxact.report import build_report

    _, ids, out = planted_scan
    summary = build_report([out], tmp_path / "report")
    tokens = next(iter(summary["checkpoints"].values()))["top_tokens"]
    first = tokens[0]
    assert (first["sample"], first["position"], first["token_id"], first["corpus_index"]) == (
        PLANT_SAMPLE, PLANT_POSITION, PLANT_ID, PLANT_SAMPLE)
    page = (tmp_path / "report" / "report.html").read_text()
    section = page[page.index('<section id="tokens">'):]
    section = section[: section.index("</section>")]
    assert "token and context" in section and "corpus index" in section
    context = " ".join(f"[{t}]" if t == PLANT_ID else str(t) for t in ids[PLANT_SAMPLE][1:8])
    assert f"ids {context}" in section     # no tokenizer: the ids around the token, the token bracketed


class _Tokenizer:
    """Decodes id i to 'w{i} ' (enough to check which ids a text was made of)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"w{i} " for i in ids)


def _corpus(rows):
    samples = [Sample(sample_id=i, input_ids=np.array(r, np.int32), corpus_index=10 + i) for i, r in enumerate(rows)]
    return TokenizedCorpus(samples=samples, hash="h", source="c.jsonl")


def test_decoded_token_and_context_with_a_tokenizer():
    corpus = _corpus([[5, 6, 7, 8, 9, 10, 11, 12], [40, 41]])
    dec = Decoder(_Tokenizer())
    mid = token_record(corpus, dec, 0, 5)
    assert mid["token_id"] == 10 and mid["token"] == "w10 "
    assert mid["context_ids"] == [6, 7, 8, 9, 10, 11, 12] and mid["context_start"] == 1
    assert mid["context"] == f"w6 w7 w8 w9 {MARK_OPEN}w10 {MARK_CLOSE}w11 w12 "
    assert mid["corpus_index"] == 10 and mid["source"] == "c.jsonl:11"
    edge = token_record(corpus, dec, 1, 0)      # clipped at both ends of a 2-token sample
    assert edge["context_ids"] == [40, 41] and edge["context"] == f"{MARK_OPEN}w40 {MARK_CLOSE}w41 "
    assert token_record(corpus, dec, 5, 0)["token_id"] is None      # no such sample: nulls, no crash


def test_undecodable_ids_keep_the_ids():
    class Broken:
        def decode(self, ids, skip_special_tokens=True):
            raise ValueError("unknown id")

    rec = token_record(_corpus([[1, 2, 3]]), Decoder(Broken()), 0, 1)
    assert rec["token_id"] == 2 and rec["context_ids"] == [1, 2, 3] and rec["token"] is None


def test_provenance_follows_topk_order():
    corpus = _corpus([[5, 6, 7], [8, 9]])
    topk = {"abs": np.array([3.0, 2.0]), "sample": np.array([1, 0]), "position": np.array([1, 2])}
    recs = topk_provenance(topk, "layers.1.hidden", 1, corpus, Decoder(None))
    assert [(r["site"], r["layer"], r["token_id"]) for r in recs] == [("layers.1.hidden", 1, 9),
                                                                      ("layers.1.hidden", 1, 7)]
