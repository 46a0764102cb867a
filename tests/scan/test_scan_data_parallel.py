"""A torchrun (gloo) scan equals the 1-process scan: order statistics, histograms, top-k, per-channel and
per-sample maxima bit for bit, sums and moments to 1e-12; uneven splits (fewer samples than ranks, ranks
with no batch, a world size that is not a power of two); only rank 0 writes and reports progress."""

from __future__ import annotations

import json
import re

import pytest
from scan_helpers import write_corpus
from scan_torchrun import TINY, assert_same_results, run, scan_cmd, torchrun_cmd

CASES = [
    # (sample lengths, ranks): 9 samples over 2 ranks; 1 sample over 2 ranks (rank 1 idle);
    # 2 samples over 3 ranks (fewer samples than ranks; 3 = a tree merge with an odd rank out)
    ([9, 14, 5, 14, 7, 3, 11, 14, 6], 2),
    ([6], 2),
    ([9, 4], 3),
]


@pytest.mark.parametrize("lengths,nproc", CASES)
def test_torchrun_scan_equals_one_process(tmp_path, lengths, nproc):
    corpus = write_corpus(tmp_path / "c.jsonl", lengths)
    args = [*TINY, "--corpus", str(corpus)]
    one = run(scan_cmd(*args, "-q", "--out", str(tmp_path / "one")), tmp_path)
    many = run(torchrun_cmd(nproc, *args, "--sync-every", "1", "--out", str(tmp_path / "many")), tmp_path)
    a, b = assert_same_results(tmp_path / "one", tmp_path / "many")
    assert a["metadata"]["world_size"] == 1 and b["metadata"]["world_size"] == nproc
    assert b["metadata"]["num_tokens_scanned"] == sum(lengths)
    # rank 0 alone prints the table; the others print nothing on stdout
    assert many.stdout.count("M = ") == 1 and one.stdout.count("M = ") == 1
    # the progress bar (rank 0 only) shows every rank's tokens/s at its sync points
    rates = re.findall(r"rank tok/s=([^,\]]+)", many.stderr)
    assert rates and all(len(r.split()) == nproc for r in rates), many.stderr[-2000:]
    # one bar: it is drawn at 0% once, at creation (later redraws, 100% included, depend on timing)
    assert many.stderr.count("scan:   0%") == 1 and "scan: 100%" in many.stderr
    # only rank 0 wrote, and the checkpoint folder was cleaned up
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["stats.json", "stats.safetensors"]


def test_every_sample_is_counted_once_across_ranks(tmp_path):
    """Per-sample token counts and peaks come from the rank that scanned each sample, exactly once."""
    lengths = [9, 14, 5, 14, 7, 3, 11, 14, 6]
    corpus = write_corpus(tmp_path / "c.jsonl", lengths)
    run(torchrun_cmd(2, *TINY, "--corpus", str(corpus), "-q", "--out", str(tmp_path / "two")), tmp_path)
    doc = json.loads((tmp_path / "two" / "stats.json").read_text())
    from safetensors.numpy import load_file

    side = load_file(str(tmp_path / "two" / "stats.safetensors"))
    assert side["samples/num_tokens"].tolist() == lengths
    assert doc["metadata"]["num_tokens_scanned"] == sum(lengths)
    assert (side["embedding/sample_abs_max"] > 0).all()
