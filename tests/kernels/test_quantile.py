"""Histogram bins and nearest-rank quantiles against numpy (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maxact_kernels import HIST_BINS, ActivationStats, bin_values, quantile_from_hist
from maxact_kernels.hist_math import INF_BIN, bin_upper_edges


def bf16_truncated_abs(x: torch.Tensor) -> np.ndarray:
    """Non-NaN |x| truncated to bfloat16 (the histogram's resolution), as float32."""
    a = np.abs(x.to(torch.float32).numpy().reshape(-1))
    a = a[~np.isnan(a)]
    return (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def test_bin_values_and_edges():
    v = bin_values()
    assert v.shape == (HIST_BINS,) and v.dtype == np.float32
    assert v[0] == 0.0 and v[0x3F80] == 1.0 and v[INF_BIN] == np.inf
    assert np.all(np.diff(v[: INF_BIN + 1]) > 0)
    up = bin_upper_edges()
    assert up[0x3F80] == np.float32(1.0078125) and up[INF_BIN - 1] == np.inf
    # each bin's value truncates to itself: the bin of bin_values()[b] is b
    assert np.array_equal(v[:INF_BIN + 1].view(np.uint32) >> 16, np.arange(INF_BIN + 1))


def test_quantile_edge_cases():
    h = np.zeros(HIST_BINS, np.int64)
    assert np.isnan(quantile_from_hist(h, 0.5))
    assert np.isnan(quantile_from_hist(h, [0.1, 0.9])).all()
    h[0x3F80] = 3  # 1.0 three times
    h[0x4000] = 1  # 2.0
    assert quantile_from_hist(h, 0.0) == 1.0
    assert quantile_from_hist(h, 0.75) == 1.0
    assert quantile_from_hist(h, 0.76) == 2.0
    assert quantile_from_hist(h, 1.0) == 2.0
    out = quantile_from_hist(h, [0.0, 1.0])
    assert isinstance(out, np.ndarray) and out.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        quantile_from_hist(h, 1.5)
    with pytest.raises(ValueError):
        quantile_from_hist(h[:10], 0.5)


finite_or_special = st.one_of(
    st.floats(min_value=-7e5, max_value=7e5, allow_nan=False, width=32),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-40, 3e-39]),
)
qs = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(data=st.lists(finite_or_special, min_size=1, max_size=80), q=qs,
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_property_quantile_matches_numpy(data, q, dtype):
    """quantile == numpy inverted_cdf of the bf16-truncated |x|: exact for bf16 input; for other dtypes
    the bf16 truncation of the exact quantile (truncation is monotone)."""
    x = torch.tensor(data, dtype=torch.float32).to(dtype).reshape(-1, 1)
    st_ = ActivationStats(1, device="cpu", backend="reference")
    st_.update(x)
    a = bf16_truncated_abs(x)
    if a.size == 0:
        assert np.isnan(st_.quantile(q)).all()
        return
    want = np.quantile(a.astype(np.float64), np.array(q), method="inverted_cdf")
    got = st_.quantile(q)
    assert np.array_equal(got, want), f"{got} vs {want}"
    exact = np.quantile(np.abs(x.float().numpy().reshape(-1)[~np.isnan(x.float().numpy().reshape(-1))]).astype(np.float64),
                        np.array(q), method="inverted_cdf")
    truncated = (exact.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert np.array_equal(got, truncated.astype(np.float64))
    if dtype == torch.bfloat16:
        assert np.array_equal(got, exact)
    assert st_.quantile(q[0]) == got[0]


def test_quantile_triton_equals_reference(rng):
    x = torch.from_numpy(rng.standard_normal((6, 40)).astype(np.float32) * 30).to(torch.bfloat16)
    q = [0.0, 0.25, 0.5, 0.9, 0.999, 1.0]
    got = []
    for backend in ("reference", "triton"):
        s = ActivationStats(40, device="cpu", backend=backend)
        s.update(x)
        got.append(s.quantile(q))
    assert np.array_equal(got[0], got[1])
    want = np.quantile(np.abs(x.float().numpy()).reshape(-1), q, method="inverted_cdf")
    assert np.array_equal(got[0], want)
