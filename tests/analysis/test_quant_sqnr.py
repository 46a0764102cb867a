"""SQNR from the exact |x| histogram equals SQNR computed on the raw tensor, for every format.

The reference quantizes the raw bf16 tensor in torch (float64 arithmetic for INT, torch's own
float8 casts for FP8) and measures the error directly; the histogram path never sees the tensor.
"""

import math

import numpy as np
import pytest
import torch

from fabricate import abs_hist
from maxact.analysis import quant as Q

FMT_QMAX = {"int8": 127.0, "int4": 7.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
TORCH_FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def bf16_with_outliers(seed: int, shape=(257, 193), n_out: int = 9, scale_out: float = 800.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape[0], 1, generator=g))
    idx = torch.randint(0, x.numel(), (n_out,), generator=g)
    x.view(-1)[idx] = (torch.rand(n_out, generator=g) + 0.5) * scale_out * torch.sign(torch.randn(n_out, generator=g))
    x.view(-1)[:5] = torch.tensor([0.0, -0.0, 1e-30, -3e-9, 2.0**-130])  # zeros, denormal-ish values
    return x.bfloat16()


def torch_quant_dequant(x: torch.Tensor, scale: float, fmt: str) -> torch.Tensor:
    """Independent per-tensor symmetric quantize-dequantize of the raw tensor (float64 result)."""
    x64 = x.double()
    if fmt.startswith("int"):
        q = FMT_QMAX[fmt]
        return torch.clamp(torch.round(x64 / scale), -q, q) * scale
    y = torch.clamp(x64 / scale, -FMT_QMAX[fmt], FMT_QMAX[fmt])
    return y.float().to(TORCH_FP8[fmt]).double() * scale


def torch_sqnr(x: torch.Tensor, scale: float, fmt: str) -> float:
    x64 = x.double()
    err = x64 - torch_quant_dequant(x, scale, fmt)
    return 10.0 * math.log10(float((x64 * x64).sum()) / float((err * err).sum()))


def hist_of(x: torch.Tensor) -> np.ndarray:
    return abs_hist(x.float().numpy())


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sqnr_histogram_equals_raw_tensor(fmt, seed):
    x = bf16_with_outliers(seed)
    h = hist_of(x)
    m = float(x.float().abs().max())
    clips = [m, m * 0.37, m / 100.0, 2.0 ** -3 * FMT_QMAX[fmt], float(np.quantile(x.float().abs(), 0.999))]
    for policy in Q.DEFAULT_POLICIES:
        clips.append(Q.clip_for_policy(h, policy, fmt))
    for clip in clips:
        scale = clip / FMT_QMAX[fmt]
        got = Q.sqnr(h, scale, fmt)
        want = torch_sqnr(x, scale, fmt)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (fmt, clip, got, want)


@pytest.mark.parametrize("fmt,top", [("fp8_e4m3", 0x4420), ("fp8_e5m2", 0x4780)])
def test_fp8_grid_matches_torch_cast_for_every_bf16_value(fmt, top):
    """Q with scale 1 is exactly torch's float8 cast (saturated) for every non-negative bf16 value."""
    bits = torch.arange(0, top, dtype=torch.int32)
    v = (bits << 16).view(torch.float32)
    want = torch.clamp(v, max=FMT_QMAX[fmt]).to(TORCH_FP8[fmt]).double().numpy()
    got = Q.quantize(v.double().numpy(), 1.0, fmt)
    np.testing.assert_array_equal(got, want)


def test_int_quantize_rounds_half_to_even_and_clamps():
    got = Q.quantize(np.array([0.5, 1.5, 2.5, 126.5, 127.4, 500.0]), 1.0, "int8")
    np.testing.assert_array_equal(got, [0.0, 2.0, 2.0, 126.0, 127.0, 127.0])
    np.testing.assert_array_equal(Q.quantize(np.array([6.5, 7.6, 100.0]), 1.0, "int4"), [6.0, 7.0, 7.0])


@pytest.mark.parametrize("seed", [0, 3])
def test_percentile_clip_is_nearest_rank(seed):
    x = bf16_with_outliers(seed).float().abs().numpy().ravel()
    h = abs_hist(x)
    for p in (50.0, 99.0, 99.9, 99.99, 100.0):
        assert Q.percentile_clip(h, p) == float(np.quantile(x, p / 100, method="inverted_cdf"))
    assert Q.clip_for_policy(h, "max") == float(x.max())


def test_percentile_rank_uses_exact_arithmetic():
    # 10,000 values 1..10000 (exact in bf16 up to 256, then rounded; use small distinct ints).
    h = np.zeros(Q.HIST_BINS, dtype=np.int64)
    vals = np.arange(1, 257, dtype=np.float32)
    h += abs_hist(np.repeat(vals, 40))  # 10,240 values
    for p in (99.9, 99.99, 12.5):
        want = float(np.quantile(np.repeat(vals, 40), p / 100, method="inverted_cdf"))
        assert Q.percentile_clip(h, p) == want


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
@pytest.mark.parametrize("seed", [0, 5])
def test_mse_clip_is_the_exhaustive_optimum(fmt, seed):
    """The pruned search finds the same clip as evaluating every histogram value."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 256, generator=g)
    x.view(-1)[torch.randint(0, x.numel(), (12,), generator=g)] = 30.0 * (seed + 1)
    h = hist_of(x.bfloat16())
    values, counts = Q._nonempty(h)
    cands = values[values > 0]
    f = Q.get_format(fmt)
    errs = np.array([np.dot(counts, (values - Q.quantize(values, c / f.qmax, f)) ** 2) for c in cands])
    brute = cands[np.flatnonzero(errs == errs.min())[-1]]
    clip = Q.mse_clip(h, fmt)
    assert clip == brute
    best = Q.sqnr(h, clip / f.qmax, fmt)
    for policy in ("max", "percentile:99.9", "percentile:99.99"):
        assert best >= Q.sqnr(h, Q.scale_for_policy(h, policy, fmt), fmt) - 1e-12


def test_scale_policy_names_and_edge_cases():
    assert Q.normalize_policy("max_abs") == "max"
    assert Q.normalize_policy("clip_q0.999") == "percentile:99.9"
    assert Q.normalize_policy("p99.99") == "percentile:99.99"
    assert Q.normalize_policy("percentile:99.9") == "percentile:99.9"
    with pytest.raises(ValueError):
        Q.normalize_policy("entropy")
    assert Q.get_format("fp8-e4m3").name == "fp8_e4m3"
    empty = np.zeros(Q.HIST_BINS, dtype=np.int64)
    assert math.isnan(Q.sqnr(empty, 1.0, "int8"))
    assert math.isnan(Q.percentile_clip(empty, 99.9))
    zeros = abs_hist(np.zeros(10, dtype=np.float32))
    assert math.isnan(Q.mse_clip(zeros, "int8"))
    exact = abs_hist(np.array([1.0, 2.0, -3.0], dtype=np.float32))
    assert Q.sqnr(exact, 1.0, "int8") == math.inf  # integers quantize without error at scale 1


def test_saturated_and_underflow_fractions_match_direct_counts():
    x = bf16_with_outliers(4).float().numpy().ravel()
    h = abs_hist(x)
    a = np.abs(x)
    clip = float(np.quantile(a, 0.99, method="inverted_cdf"))
    assert Q.saturated_fraction(h, clip) == pytest.approx((a > clip).mean(), rel=1e-12)
    scale = float(a.max()) / 448.0
    flushed = ((a > 0) & (Q.quantize(a, scale, "fp8_e4m3") == 0)).sum() / (a > 0).sum()
    assert Q.underflow_fraction(h, scale, "fp8_e4m3") == pytest.approx(flushed, rel=1e-12)
    rows = Q.quant_table(h, "s", ("int8",), ("max", "mse"))
    assert [(r.fmt, r.policy) for r in rows] == [("int8", "max"), ("int8", "mse")]
    assert rows[0].saturated_fraction == 0.0
