"""On the paper's published statistics the analyses yield the paper's headline facts.

Every number is computed from the files (per-site max/min), never read from a constant: the only
literals are the paper's reported values the computation must reproduce.
"""

import math

import pytest

from maxact import analysis as A
from maxact.report import default_pairs_path


def main_checkpoints(ckpts):
    """The 24 main-analysis checkpoints: the reference set without the three Qwen2.5 Instruct ones."""
    return {n: c for n, c in ckpts.items() if not n.endswith("-Instruct")}


def test_reference_set_shape(reference_checkpoints):
    assert len(reference_checkpoints) == 27
    main = main_checkpoints(reference_checkpoints)
    assert len(main) == 24
    families = {A.family_of(c.name, c.model_type) for c in main.values()}
    assert families == set(A.FAMILY_ORDER)  # the paper's 8 families


def test_gemma3_27b_maximum(reference_checkpoints):
    carrier = A.global_max(reference_checkpoints["gemma-3-27b-it"])
    assert carrier.M == 696320.0
    assert carrier.component == "hidden"


def test_moe_vs_dense_ratios(reference_checkpoints):
    maxima = {n: A.global_max(c).M for n, c in reference_checkpoints.items()}
    ratios = {(p["a"], p["b"]): p["ratio"] for p in A.pair_ratios(maxima, A.load_pairs(default_pairs_path()))}
    assert round(ratios[("Qwen3-30B-A3B", "Qwen3-32B")], 1) == 23.4
    assert round(ratios[("Qwen3.5-35B-A3B", "Qwen3.5-27B")], 1) == 14.0
    assert maxima["Qwen3.5-35B-A3B"] == 132.0


def test_hidden_state_carries_m_in_22_of_24(reference_checkpoints):
    carriers = [A.global_max(c) for c in main_checkpoints(reference_checkpoints).values()]
    counts = A.carrier_counts(carriers)
    assert counts["hidden"] == 22
    others = {c.checkpoint: c.component for c in carriers if c.component != "hidden"}
    assert others == {"gpt-oss-20b": "mlp", "Qwen3.5-0.8B": "final_norm"}


def test_carriers_agree_with_the_files_own_location(reference_checkpoints):
    """The forward-order tie rule reproduces global_max_location in all 27 files."""
    for ckpt in reference_checkpoints.values():
        carrier = A.global_max(ckpt)
        assert carrier.site == ckpt.stored_global_site, ckpt.name
        assert carrier.M == ckpt.stored_global_max, ckpt.name


def test_sun_criterion_20_of_24_pass(reference_checkpoints):
    results = {n: A.sun_criterion(c) for n, c in main_checkpoints(reference_checkpoints).items()}
    failing = {n for n, r in results.items() if r.passed is False}
    assert all(r.passed is not None for r in results.values())
    assert failing == {"Qwen2.5-1.5B", "Qwen3.5-0.8B", "Qwen3.5-9B", "Qwen3.5-35B-A3B"}
    q = results["Qwen2.5-1.5B"]  # "absolute peak 7,968, median 13.9, ratio ~574"
    assert q.peak_abs == 7968.0
    assert q.peak_median == pytest.approx(13.9, abs=0.05)
    assert round(q.peak_ratio) == 574


def test_sun_thresholds_are_parameters(reference_checkpoints):
    ckpt = reference_checkpoints["Qwen2.5-1.5B"]
    assert A.sun_criterion(ckpt, t_ratio=500.0).passed is True  # its peak token has ratio ~574
    assert A.sun_criterion(ckpt, t_val=10_000.0).passed is False  # nothing above 7,968
    gemma = reference_checkpoints["gemma-3-27b-it"]
    assert A.sun_criterion(gemma, t_val=1e6).passed is False


def test_layer_patterns(reference_checkpoints):
    """Half-max depth separates jump-and-plateau (Qwen2.5) from gradual accumulation (Qwen3.5)."""
    jump = [A.half_max_depth(reference_checkpoints[n]) for n in ("Qwen2.5-1.5B", "Qwen2.5-7B", "Qwen2.5-32B")]
    gradual = [A.half_max_depth(reference_checkpoints[n]) for n in ("Qwen3.5-9B", "Qwen3.5-27B")]
    assert max(jump) < 0.25 < 0.75 < min(gradual)
    traj = A.layerwise_peaks(reference_checkpoints["Qwen3-8B"])
    assert traj.depth[0] == 0.0 and traj.depth[-1] == 1.0 and len(traj.peaks) == 36


def test_paper_layout_has_no_histograms(reference_checkpoints):
    ckpt = reference_checkpoints["Qwen3-8B"]
    assert not ckpt.has_histograms and not ckpt.has_sample_peaks
    assert A.sample_peaks(ckpt) is None
    site = ckpt.sites["layers.16.hidden"]
    assert site.quantiles_exact is False and 0.999 in site.quantiles
    ranges = A.checkpoint_ranges(ckpt)
    assert not ranges.fp16_overflow and all(not s.scaled for s in ranges.sites)
    assert math.isclose(ranges.M, 17664.0)
