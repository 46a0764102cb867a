"""Sun criterion against a direct per-token computation; layerwise trajectories and depth."""

import math

import numpy as np
import pytest
import torch

from fabricate import fabricate_scan
from maxact import analysis as A
from maxact.results import load_result


def direct_sun_pass(fab, t_val, t_ratio, component="hidden"):
    """Any token of any site of the component with max|x| > t_val and > t_ratio x lower median."""
    total = 0
    for name, (comp, _) in fab.components.items():
        if comp != component:
            continue
        a = np.abs(np.concatenate(fab.raw[name]))
        tmax = a.max(1)
        tmed = torch.from_numpy(a).median(dim=1).values.numpy()
        total += int(((tmax > t_val) & (tmax > t_ratio * tmed)).sum())
    return total


def test_sun_at_scan_thresholds_is_exact(fab):
    ckpt = load_result(fab.path)
    res = A.sun_criterion(ckpt)
    assert res.n_pass == direct_sun_pass(fab, 100.0, 1000.0) > 0
    assert res.passed is True
    assert res.site == "layers.1.hidden" and res.peak_abs == 3008.0


@pytest.mark.parametrize("t_val", [1.0, 50.0, 100.0, 2000.0, 2500.0, 5000.0])
@pytest.mark.parametrize("t_ratio", [10.0, 300.0, 1000.0, 3000.0, 5000.0])
def test_sun_at_other_thresholds_is_right_or_undetermined(fab, t_val, t_ratio):
    res = A.sun_criterion(load_result(fab.path), t_val, t_ratio)
    truth = direct_sun_pass(fab, t_val, t_ratio) > 0
    assert res.passed in (truth, None)
    if t_val >= 3008.0 or t_ratio >= res.max_ratio:
        assert res.passed is False


def test_site_passes_rules():
    sun = {"peak_abs": 500.0, "peak_median": 1.0, "max_ratio": 800.0, "max_ratio_abs": 400.0,
           "max_ratio_median": 0.5, "n_pass": 0, "t_val": 100.0, "t_ratio": 1000.0}
    assert A.site_passes(sun) is False  # no token's ratio exceeds 800
    assert A.site_passes(sun, t_ratio=400.0) is True  # the peak token: 500 > 400 x 1
    assert A.site_passes(sun, t_val=600.0, t_ratio=10.0) is False  # nothing above 500
    undecided = dict(sun, n_pass=5, max_ratio=5000.0, max_ratio_abs=50.0, max_ratio_median=0.01)
    assert A.site_passes(undecided, t_val=100.0, t_ratio=2000.0) is None
    assert A.site_passes(undecided, t_val=90.0, t_ratio=900.0) is True  # looser than the scan's


def test_sun_without_fields_is_undetermined(tmp_path):
    f = fabricate_scan(tmp_path / "s")
    ckpt = load_result(f.path)
    for s in ckpt.sites.values():
        s.sun = None
    res = A.sun_criterion(ckpt)
    assert res.passed is None and res.site is None and math.isnan(res.peak_abs)


def test_layerwise_peaks_and_half_max_depth(fab):
    ckpt = load_result(fab.path)
    traj = A.layerwise_peaks(ckpt, "hidden")
    np.testing.assert_array_equal(traj.layers, [0, 1, 2, 3])
    np.testing.assert_allclose(traj.depth, [0, 1 / 3, 2 / 3, 1])
    want = [float(np.abs(np.concatenate(fab.raw[f"layers.{i}.hidden"])).max()) for i in range(4)]
    np.testing.assert_array_equal(traj.peaks, want)
    # the spike enters at layer 1: half of the maximum is first reached there
    assert A.half_max_depth(ckpt) == pytest.approx(1 / 3)
    assert A.peak_depth(ckpt) == pytest.approx(1 / 3)
    assert A.layerwise_peaks(ckpt, "router").peaks.size == 0
    assert math.isnan(A.half_max_depth(ckpt, "router"))


def test_depth_profile_interpolates_in_log_space(fab):
    ckpt = load_result(fab.path)
    traj = A.layerwise_peaks(ckpt)
    grid = np.linspace(0, 1, 7)
    prof = A.depth_profile(ckpt, grid)
    np.testing.assert_allclose(prof[[0, 2, 4, 6]], np.log10(traj.peaks))
    assert prof[1] == pytest.approx(np.log10(traj.peaks[:2]).mean())
    assert A.normalized_depth(np.array([0]), 1)[0] == 0.0
