"""Merge == single pass (any chunking), sequential updates, state_dict round trips, reset."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maxact_kernels import ActivationStats
from tests.utils import DTYPES, assert_close_scalar, assert_verbose_equal, make_ties, make_values

FEATURES = dict(track_tokens=True, track_channels=True, topk=7, num_samples=5)
SUM_KEYS = ("sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean")
SUM_RTOL = {"reference": 1e-12, "triton": 1e-6}


def new_stats(backend, c, **kw):
    return ActivationStats(c, device="cpu", backend=backend, **{**FEATURES, **kw})


def assert_same_summary(got: dict, want: dict, backend: str) -> None:
    """Everything bit-identical except sums (and values derived from them), which differ by rounding."""
    got, want = dict(got), dict(want)
    rtol = SUM_RTOL[backend]
    # cancellation in sum/mean/std: measure their error against sums of magnitudes
    scales = {key: abs(want[key]) for key in SUM_KEYS}
    scales.update(sum=abs(want["abs_sum"]), mean=abs(want["abs_mean"]), std=abs(want["rms"]))
    for key in SUM_KEYS:
        assert_close_scalar(got.pop(key), want.pop(key), scale=scales[key], rtol=10 * rtol, name=key)
    sun_g, sun_w = dict(got.pop("sun")), dict(want.pop("sun"))
    for key in ("mean_ratio", "std_ratio"):
        a, b = sun_g.pop(key), sun_w.pop(key)
        if b is not None and np.isfinite(b):
            assert_close_scalar(a, b, scale=abs(b), rtol=1e-12, name=f"sun.{key}")
        else:
            assert_verbose_equal(a, b, f"sun.{key}")
    assert_verbose_equal(sun_g, sun_w, "sun")
    assert_verbose_equal(got, want, "summary")


def sorted_ids(rows: int, per_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(rows)
    return r // per_sample, r % per_sample


def random_cuts(rng: np.random.Generator, rows: int, pieces: int) -> list[int]:
    """Chunk boundaries, empty chunks allowed."""
    inner = sorted(rng.integers(0, rows + 1, size=pieces - 1).tolist())
    return [0, *inner, rows]


def chunked(backend, x, mask, sids, pos, cuts, **kw):
    """One state per chunk, then merge; and one state fed chunk by chunk."""
    c = x.shape[-1]
    parts, sequential = [], new_stats(backend, c, **kw)
    for a, b in zip(cuts[:-1], cuts[1:]):
        st_ = new_stats(backend, c, **kw)
        m = mask[a:b] if mask is not None else None
        st_.update(x[a:b], m, sids[a:b], pos[a:b])
        sequential.update(x[a:b], m, sids[a:b], pos[a:b])
        parts.append(st_)
    return ActivationStats.merge(parts), sequential


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("token_median", ["all", "candidates"])
def test_merge_equals_single_pass(backend, dtype, token_median, rng):
    rows, c = 40, 29
    x = make_values((rows, c), dtype, rng)
    x[7, 3] = 5000.0  # passes the criterion
    x[31:33] = make_ties((2, c), dtype, rng)
    mask = torch.from_numpy(rng.random(rows) < 0.85)
    sids, pos = sorted_ids(rows, per_sample=8)  # 5 samples of 8 tokens
    kw = dict(token_median=token_median, sun_abs_threshold=50.0, sun_ratio_threshold=20.0)
    single = new_stats(backend, c, **kw)
    single.update(x, mask, sids, pos)
    want = single.summary()
    merged, sequential = chunked(backend, x, mask, sids, pos, random_cuts(rng, rows, 5), **kw)
    assert_same_summary(merged.summary(), want, backend)
    assert_same_summary(sequential.summary(), want, backend)


def test_many_updates_compact_topk(backend, rng):
    """More updates than the pending top-k buffer holds: compaction keeps the exact top-k."""
    rows, c = 30, 13
    x = make_ties((rows, c), torch.bfloat16, rng) * torch.from_numpy(rng.integers(1, 4, size=(rows, 1))).bfloat16()
    sids, pos = sorted_ids(rows, per_sample=3)
    single = new_stats(backend, c, topk=9)
    single.update(x, None, sids, pos)
    merged, sequential = chunked(backend, x, None, sids, pos, list(range(0, rows + 1, 2)), topk=9)
    assert_same_summary(sequential.summary(), single.summary(), backend)
    assert_same_summary(merged.summary(), single.summary(), backend)


def test_topk_threshold_keeps_ties_from_later_updates(backend):
    """Updates after the first skip rows and elements below the least kept |x|, but not ties with it: a
    later update's equal |x| with a smaller sample id must still enter, and values below change nothing."""
    c, k = 10, 4
    st = new_stats(backend, c, topk=k)
    want = new_stats("reference", c, topk=k)
    first = torch.zeros(6, c, dtype=torch.bfloat16)
    first[:, 3] = 7.0                   # six ties at 7 (sample 5): the kept K, and the threshold 7
    first[2, 8] = -9.0
    below = torch.full((5, c), 6.5, dtype=torch.bfloat16)   # all below the threshold
    tie = torch.zeros(3, c, dtype=torch.bfloat16)
    tie[1, 0] = -7.0                    # a tie with an earlier sample: it enters the top K
    tie[2, 9] = 6.0
    for x, sid in ((first, 5), (below, 6), (tie, 1), (below, 0)):
        sids = torch.full((x.shape[0],), sid, dtype=torch.int64)
        pos = torch.arange(x.shape[0])
        st.update(x, None, sids, pos)
        want.update(x, None, sids, pos)
    got = st.summary()["topk"]
    assert got["sample"].tolist() == [5, 1, 5, 5] and got["value"].tolist() == [-9.0, -7.0, 7.0, 7.0]
    assert_same_summary(st.summary(), want.summary(), backend)


def test_state_dict_round_trip(backend, rng):
    c = 21
    x1, x2 = make_values((12, c), torch.float16, rng), make_values((9, c), torch.float16, rng)
    sids1, pos1 = sorted_ids(12, 4)
    sids2, pos2 = sids1[:9] + 3, pos1[:9]
    a = new_stats(backend, c)
    a.update(x1, None, sids1, pos1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = new_stats(backend, c)
    b.load_state_dict(torch.load(buf))
    assert_same_summary(b.summary(), a.summary(), backend)
    a.update(x2, None, sids2, pos2)
    b.update(x2, None, sids2, pos2)
    assert_same_summary(b.summary(), a.summary(), backend)
    with pytest.raises(ValueError, match="config"):
        new_stats(backend, c, topk=3).load_state_dict(a.state_dict())


def test_reset_and_merge_errors(backend, rng):
    c = 8
    st_ = new_stats(backend, c)
    st_.update(make_values((5, c), torch.float32, rng))
    st_.reset()
    empty = new_stats(backend, c).summary()
    assert_same_summary(st_.summary(), empty, backend)
    with pytest.raises(ValueError):
        ActivationStats.merge([st_, new_stats(backend, c + 1)])
    with pytest.raises(ValueError):
        ActivationStats.merge([])


values = st.lists(st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 200.0, -7e5, float("nan"),
                                   float("inf"), 1e-40]), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=values, c=st.integers(1, 6), cuts=st.lists(st.integers(0, 10), max_size=4),
       dtype=st.sampled_from(DTYPES))
def test_property_merge_reference(data, c, cuts, dtype):
    check_property_merge("reference", data, c, cuts, dtype)


@settings(max_examples=6, deadline=None)
@given(data=values, c=st.integers(1, 6), cuts=st.lists(st.integers(0, 10), max_size=3),
       dtype=st.sampled_from(DTYPES))
def test_property_merge_triton(data, c, cuts, dtype):
    check_property_merge("triton", data, c, cuts, dtype)


def check_property_merge(backend, data, c, cuts, dtype):
    rows = max(1, len(data) // c)
    vals = (data * (rows * c // len(data) + 1))[: rows * c]
    x = torch.tensor(vals, dtype=torch.float32).to(dtype).reshape(rows, c)
    sids, pos = sorted_ids(rows, per_sample=3)
    kw = dict(topk=4, num_samples=3, sun_abs_threshold=100.0, sun_ratio_threshold=2.0)
    single = new_stats(backend, c, **kw)
    single.update(x, None, sids, pos)
    bounds = [0, *sorted(min(v, rows) for v in cuts), rows]
    merged, sequential = chunked(backend, x, None, sids, pos, bounds, **kw)
    assert_same_summary(merged.summary(), single.summary(), backend)
    assert_same_summary(sequential.summary(), single.summary(), backend)
