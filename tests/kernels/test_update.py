"""One update against the numpy oracle, on both backends (Triton interpreted), every dtype and shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxact_kernels import ActivationStats
from tests.kernels.oracle import oracle_summary
from tests.utils import (
    DTYPES,
    assert_close_scalar,
    assert_verbose_allclose,
    assert_verbose_equal,
    make_ties,
    make_values,
)

FEATURES = dict(track_tokens=True, track_channels=True, topk=6, num_samples=3)
SHAPES = [(1, 1), (1, 7), (5, 123), (3, 4, 37), (2, 3, 5, 17)]
EXACT_KEYS = ("count", "min", "max", "abs_max", "nan_count", "posinf_count", "neginf_count", "abs_hist",
              "channel_abs_max", "sample_abs_max", "sample_id_out_of_range", "topk")
# fp32 partials inside a Triton program (DESIGN.md); the reference sums in float64
SUM_RTOL = {"reference": 1e-12, "triton": 1e-6}


def row_ids(shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ids and positions in (sample, position) order, as maxact feeds rows: the second-to-last
    dimension is the position; ids start at -1 so some rows are out of range of num_samples=3."""
    t = shape[-2] if len(shape) >= 2 else 1
    rows = int(np.prod(shape[:-1]))
    r = torch.arange(rows)
    return r // t - 1, r % t


def run(backend, x, mask=None, sample_ids=None, positions=None, **features):
    st = ActivationStats(x.shape[-1], device="cpu", backend=backend, **{**FEATURES, **features})
    st.update(x, mask=mask, sample_ids=sample_ids, positions=positions)
    return st.summary()


def check_summary(got: dict, want: dict, backend: str) -> None:
    """Exact where the semantics are exact, sums to the backend's accuracy."""
    for key in EXACT_KEYS:
        assert_verbose_equal(got[key], want[key], key)
    rtol = SUM_RTOL[backend]
    scale = {"sum": want["abs_sum"], "sum_sq": want["sum_sq"], "abs_sum": want["abs_sum"]}
    for key, sc in scale.items():
        assert_close_scalar(got[key], want[key], scale=sc, rtol=rtol, name=key)
    n = max(1, want["count"])
    for key, sc in (("mean", want["abs_sum"] / n), ("abs_mean", want["abs_mean"]), ("rms", want["rms"]),
                    ("std", want["rms"])):
        assert_close_scalar(got[key], want[key], scale=sc if np.isfinite(sc) else 0.0, rtol=10 * rtol, name=key)
    sun_got, sun_want = dict(got["sun"]), dict(want["sun"])
    for key in ("mean_ratio", "std_ratio"):
        a, b = sun_got.pop(key), sun_want.pop(key)
        if b is None or a is None:
            assert a is None and b is None, f"sun.{key}: {a} vs {b}"
        else:
            assert_verbose_allclose(a, b, rtol=1e-12, name=f"sun.{key}")
    assert_verbose_equal(sun_got, sun_want, "sun")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_matches_oracle(backend, dtype, shape, masked, rng):
    x = make_values(shape, dtype, rng)
    sids, pos = row_ids(shape)
    mask = torch.from_numpy(rng.random(shape[:-1]) < 0.7) if masked else None
    got = run(backend, x, mask, sids, pos)
    want = oracle_summary(x, mask, sids, pos, topk=FEATURES["topk"], num_samples=FEATURES["num_samples"])
    check_summary(got, want, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "view",
    ["transposed", "sliced", "row_strided", "expanded"],
)
def test_non_contiguous_views(backend, dtype, view, rng):
    if view == "transposed":
        x = make_values((37, 6), dtype, rng).t()  # [6, 37], channel stride 6
    elif view == "sliced":
        x = make_values((5, 130), dtype, rng)[:, 3:126]  # row stride 130
    elif view == "row_strided":
        x = make_values((2, 8, 19), dtype, rng)[:, ::3]  # [2, 3, 19], gaps between rows
    else:
        x = make_values((1, 23), dtype, rng).expand(4, 23)  # row stride 0
    assert not x.is_contiguous()
    got = run(backend, x)
    want = oracle_summary(x, topk=FEATURES["topk"], num_samples=FEATURES["num_samples"])
    check_summary(got, want, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_and_all_masked(backend, dtype, rng):
    empty = torch.empty(0, 9, dtype=dtype)
    x = make_values((4, 9), dtype, rng)
    none = torch.zeros(4, dtype=torch.bool)
    for args in ((empty,), (x, none)):
        got = run(backend, *args)
        want = oracle_summary(*args, topk=FEATURES["topk"], num_samples=FEATURES["num_samples"])
        check_summary(got, want, backend)
        assert got["count"] == 0 and np.isnan(got["mean"]) and np.isnan(got["min"]) and np.isnan(got["abs_max"])
        assert got["sun"]["n_tokens"] == 0 and np.isnan(got["sun"]["max_ratio"]) and got["topk"]["abs"].size == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_in_topk_and_records(backend, dtype, rng):
    shape = (4, 6, 11)  # values from {0, +-1, +-2, +-3, NaN}: the max is tied across rows and channels
    x = make_ties(shape, dtype, rng)
    sids, pos = row_ids(shape)
    got = run(backend, x, None, sids, pos, topk=13, sun_abs_threshold=1.5, sun_ratio_threshold=1.0)
    want = oracle_summary(x, None, sids, pos, topk=13, num_samples=3, t_val=1.5, t_ratio=1.0)
    check_summary(got, want, backend)
    assert len(set(got["topk"]["abs"].tolist())) == 1, "test data should tie the whole top-k"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_median_candidates(backend, dtype, rng):
    """candidates mode: same n_tokens, n_pass and peak; max-ratio among tokens above t_val."""
    shape = (6, 5, 33)
    x = make_values(shape, dtype, rng, specials=False)
    x[1, 2, 7] = 3000.0  # one massive activation, above t_val, passes
    x[4, 0, 3] = -250.0
    sids, pos = row_ids(shape)
    kw = dict(sun_abs_threshold=200.0, sun_ratio_threshold=50.0)
    for mode in ("all", "candidates"):
        got = run(backend, x, None, sids, pos, token_median=mode, **kw)
        want = oracle_summary(x, None, sids, pos, topk=6, num_samples=3, t_val=200.0, t_ratio=50.0,
                              token_median=mode)
        check_summary(got, want, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_median_is_exact_torch_median(backend, dtype, rng):
    """Lower median of non-NaN |x| per token equals torch.median exactly (fp16/fp32 included: an
    element's value, not its histogram bin), including rows of equal values and even counts."""
    c = 24
    x = make_values((8, c), dtype, rng, specials=False)
    x[1] = x[1, 0]  # all equal
    x[2, ::2] = float("nan")  # 12 values left: even count
    x[3, :-1] = float("nan")  # one value left
    x[5, :5] = torch.tensor([1e-40, -1e-41, 3e-39, 0.0, -0.0]).to(dtype)
    st = ActivationStats(c, device="cpu", backend=backend, track_tokens=True, sun_abs_threshold=0.0,
                         sun_ratio_threshold=0.0)
    for r in range(8):  # one token per update: the peak record then holds that token's median
        st.reset()
        st.update(x[r : r + 1])
        a = x[r].float().abs()
        want = torch.median(a[~torch.isnan(a)]).item()
        assert st.summary()["sun"]["peak_median"] == want, f"row {r}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_larger_matches_oracle(backend, dtype, rng):
    shape = (64, 300)
    x = make_values(shape, dtype, rng)
    sids, pos = row_ids((8, 8, 300))
    mask = torch.from_numpy(rng.random(64) < 0.9)
    got = run(backend, x, mask, sids, pos, topk=20)
    want = oracle_summary(x, mask, sids, pos, topk=20, num_samples=3)
    check_summary(got, want, backend)
