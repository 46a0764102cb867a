"""Subsample M from the saved per-sample peaks equals re-scanning only that subsample.

This is what makes the paper's stability check (M over 1,000- and 2,000-sample subsamples, 5 repeats)
free: no model re-run. Every sample has the same length and the token budget holds one sample, so a
sample's forward pass is the same computation in the full scan and in the re-scan.
"""

import json

import numpy as np

from maxact.analysis.stability import sample_peaks, stability, subsample_indices
from maxact.results import load_result
from maxact.scan import ScanConfig, scan

LENGTH = 24
SCAN = dict(model="random:tiny-qwen3", device="cpu", dtype="float32", backend="reference",
            tokens_per_batch=LENGTH, progress=False, seed=0)


def write_corpus(path, ids, categories):
    with open(path, "w") as f:
        for row, category in zip(ids, categories):
            f.write(json.dumps({"input_ids": row, "category": category}) + "\n")


def test_subsample_m_from_peaks_equals_rescan(tmp_path):
    rng = np.random.default_rng(7)
    ids = [rng.integers(3, 250, LENGTH).tolist() for _ in range(12)]
    categories = ["code", "web", "math"] * 4
    write_corpus(tmp_path / "full.jsonl", ids, categories)
    scan(ScanConfig(corpus=str(tmp_path / "full.jsonl"), out=str(tmp_path / "full"), **SCAN))
    peaks = sample_peaks(load_result(tmp_path / "full"))
    assert peaks is not None and not peaks.sites_missing
    assert peaks.peaks.size == 12 and peaks.M > 0

    draws = subsample_indices(peaks.category, 6, repeats=3, seed=1)
    rows = stability(peaks, sizes=[6], repeats=3, seed=1)
    for k, idx in enumerate(draws):
        # category-proportional: 2 of each of the 3 categories
        assert sorted(np.bincount(peaks.category[idx]).tolist()) == [2, 2, 2]
        sub = tmp_path / f"sub{k}.jsonl"
        write_corpus(sub, [ids[i] for i in idx], [categories[i] for i in idx])
        scan(ScanConfig(corpus=str(sub), out=str(tmp_path / f"sub{k}"), **SCAN))
        rescanned = load_result(tmp_path / f"sub{k}").stored_global_max
        assert rescanned == peaks.peaks[idx].max()
        assert rescanned == rows[0].maxima[k]
