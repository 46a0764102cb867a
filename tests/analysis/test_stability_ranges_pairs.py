"""Subsample stability and bootstrap interval from per-sample peaks, range flags, pairs, families."""

import json
import math

import numpy as np
import pytest

from fabricate import abs_hist, fabricate_scan
from maxact import analysis as A
from maxact.results import load_result


def direct_subset_max(fab, indices):
    """M of a subset computed from the raw activations of those samples only (a re-scan of them)."""
    return max(float(np.abs(fab.raw[name][i]).max()) for name, (comp, _) in fab.components.items()
               if comp not in ("gate", "router") for i in indices)


def test_sample_peaks_give_m_of_any_subset(fab):
    peaks = A.sample_peaks(load_result(fab.path))
    assert peaks.sites_missing == ()
    assert peaks.M == A.global_max(load_result(fab.path)).M
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx = rng.choice(len(peaks.peaks), size=rng.integers(1, len(peaks.peaks)), replace=False)
        assert peaks.peaks[idx].max() == direct_subset_max(fab, idx)


def test_stability_rows_equal_rescanning_the_subsamples(fab):
    peaks = A.sample_peaks(load_result(fab.path))
    rows = A.stability(peaks, sizes=(5, 10), repeats=4, seed=7)
    for i, row in enumerate(rows):
        draws = A.subsample_indices(peaks.category, row.size, row.repeats, seed=7 + i)
        assert list(row.maxima) == [direct_subset_max(fab, d) for d in draws]
        assert row.mean == pytest.approx(np.mean(row.maxima))
        assert row.cv == pytest.approx(np.std(row.maxima, ddof=1) / np.mean(row.maxima))
        assert row.full_M == 3008.0
    assert rows == A.stability(peaks, sizes=(5, 10), repeats=4, seed=7)  # seeded


def test_subsamples_keep_category_proportions():
    category = np.repeat(np.arange(7), [850, 850, 850, 850, 400, 300, 900])  # the paper's corpus recipe
    assert A.default_sizes(5000) == (1000, 2000)
    alloc = A.proportional_allocation(category, 1000)
    np.testing.assert_array_equal(alloc, [170, 170, 170, 170, 80, 60, 180])
    for draw in A.subsample_indices(category, 1000, repeats=3, seed=0):
        assert len(np.unique(draw)) == 1000
        np.testing.assert_array_equal(np.bincount(category[draw], minlength=7), alloc)
    odd = A.proportional_allocation(np.array([0, 0, 1, 2, 2, 2, 2]), 3)
    assert odd.sum() == 3 and odd[2] == 2
    with pytest.raises(ValueError):
        A.proportional_allocation(category, 6000)


def test_bootstrap_interval_is_the_exact_bootstrap_distribution():
    rng = np.random.default_rng(0)
    peaks = np.round(rng.lognormal(3, 1, 200), 1)
    ci = A.bootstrap_ci(peaks, level=0.9)
    assert ci.upper == ci.M == peaks.max()
    # Monte Carlo replicates agree with the closed form P(M* <= x_(j)) = (j / N)^N
    from maxact.analysis.stability import bootstrap_maxima

    reps = bootstrap_maxima(peaks, n_boot=4000, seed=3)
    srt = np.sort(peaks)
    for j in (-1, -2, -3, -5):
        exact = (np.searchsorted(srt, srt[j], side="right") / srt.size) ** srt.size
        assert (reps <= srt[j]).mean() == pytest.approx(exact, abs=0.03)
    assert (reps < ci.lower).mean() <= 0.05 + 0.02
    assert A.bootstrap_ci(np.array([5.0])).lower == 5.0
    assert math.isnan(A.bootstrap_ci(np.array([])).M)


def test_stability_needs_per_sample_peaks(tmp_path):
    f = fabricate_scan(tmp_path / "n", sidecar=False)
    assert A.sample_peaks(load_result(f.path)) is None


def test_range_flags_from_histogram(fab):
    ckpt = load_result(fab.path)
    ranges = A.checkpoint_ranges(ckpt)
    assert not ranges.fp16_overflow and ranges.e4m3_unscaled_overflow and not ranges.e5m2_unscaled_overflow
    assert ranges.sites_over_fp16 == ["layers.0.gate"]  # the gate spike, outside M
    gate = next(s for s in ranges.sites if s.site == "layers.0.gate")
    raw = np.abs(np.concatenate(fab.raw["layers.0.gate"]))
    assert gate.fp16_overflow_count == int((raw > 65504).sum()) == 1
    for r in gate.scaled:
        assert r.saturated_fraction == pytest.approx((raw > r.clip).mean())
        flushed = ((raw > 0) & (A.quantize(raw, r.scale, r.fmt) == 0)).sum() / (raw > 0).sum()
        assert r.underflow_fraction == pytest.approx(flushed)
    msgs = A.flag_messages(ranges)
    assert any("outside M" in m and "layers.0.gate" in m for m in msgs)
    assert any("E4M3 range" in m for m in msgs)


def test_fp16_flag_on_m():
    from maxact.results import Checkpoint, SiteStats

    site = SiteStats("layers.0.hidden", "hidden", 0, 3, 0, 1, 1, 1, -7e4, 1e5, 1e5,
                     abs_hist=abs_hist(np.array([1.0, -7e4, 1e5], dtype=np.float32)))
    ckpt = Checkpoint("big", None, "maxact", None, 1, 4, {}, {site.name: site})
    ranges = A.checkpoint_ranges(ckpt)
    assert ranges.fp16_overflow and ranges.e5m2_unscaled_overflow
    assert ranges.sites[0].fp16_overflow_count == 2
    assert "float16" in A.flag_messages(ranges)[0]


def test_pairs(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"a": "x", "b": "y", "label": "y vs x"}, {"a": "x", "b": "z"}]))
    pairs = A.load_pairs(path)
    assert pairs[1].label == ""
    out = A.pair_ratios({"x": 10.0, "y": 234.0}, pairs)
    assert out[0]["ratio"] == pytest.approx(23.4) and out[1]["ratio"] is None
    assert A.pair_ratios({"x": 10.0, "y": 234.0}, pairs, keep_missing=False) == out[:1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"a": "x"}]))
    with pytest.raises(ValueError):
        A.load_pairs(bad)


@pytest.mark.parametrize(
    "name,model_type,family",
    [
        ("Qwen2.5-VL-7B", "qwen2_5_vl", "Qwen2.5-VL"), ("Qwen2.5-7B-Instruct", "qwen2", "Qwen2.5"),
        ("Qwen3-30B-A3B", "qwen3_moe", "Qwen3"), ("Qwen3.5-0.8B", "qwen3_5", "Qwen3.5"),
        ("gemma-2-9b", "gemma2", "Gemma2"), ("gemma-2b", "gemma", "Gemma2"), ("gemma-7b", "gemma", "Gemma"),
        ("gemma-3-4b-it", "gemma3", "Gemma3"), ("Ling-mini-5T", "bailing_moe", "Ling"),
        ("gpt-oss-20b", "gpt_oss", "GPT-OSS"), ("my-model", "qwen3", "Qwen3"), ("x", None, "other"),
        ("scheduling-net", "llama", "llama"),
    ],
)
def test_families(name, model_type, family):
    assert A.family_of(name, model_type) == family


def test_family_overrides_and_moe():
    assert A.family_of("my-model", "qwen3", {"my-model": "Mine"}) == "Mine"
    assert A.is_moe("Qwen3-30B-A3B") and A.is_moe("x", "gpt_oss") and not A.is_moe("Qwen3-32B", "qwen3")
