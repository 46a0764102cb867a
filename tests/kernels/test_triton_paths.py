"""Triton code paths the default interpreter launch shapes do not reach, and input validation."""

from __future__ import annotations

import pytest
import torch

from maxact_kernels import ActivationStats
from tests.kernels.oracle import oracle_summary
from tests.kernels.test_update import check_summary, row_ids
from tests.utils import DTYPES, make_values


@pytest.fixture
def tiny_blocks(triton_modules, monkeypatch):
    """Blocks narrower than the rows: several channel blocks per row, token rows read block by block
    once per bisection step, single-row tiles, many programs, top-k partials folded tile by tile."""
    rows, tokens, topk = triton_modules
    monkeypatch.setattr(rows, "CPU_BLOCK_C", 16)
    monkeypatch.setattr(rows, "CPU_BLOCK_R", 1)
    monkeypatch.setattr(rows, "CPU_PROGRAMS", 5)
    monkeypatch.setattr(tokens, "CPU_BLOCK_C", 16)
    monkeypatch.setattr(tokens, "CPU_BLOCK_R", 1)
    monkeypatch.setattr(tokens, "CPU_PROGRAMS", 4)
    monkeypatch.setattr(topk, "CPU_BLOCK_C", 16)
    monkeypatch.setattr(topk, "CAND_BLOCK", 16)
    return triton_modules


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("token_median", ["all", "candidates"])
def test_wide_rows_block_by_block(tiny_blocks, dtype, token_median, rng):
    shape = (3, 5, 41)
    x = make_values(shape, dtype, rng)
    x[2, 1, 40] = 900.0
    sids, pos = row_ids(shape)
    mask = torch.from_numpy(rng.random(shape[:-1]) < 0.8)
    kw = dict(track_tokens=True, track_channels=True, topk=5, num_samples=3, sun_abs_threshold=100.0,
              sun_ratio_threshold=10.0, token_median=token_median)
    st = ActivationStats(41, device="cpu", backend="triton", **kw)
    st.update(x, mask, sids, pos)
    want = oracle_summary(x, mask, sids, pos, topk=5, num_samples=3, t_val=100.0, t_ratio=10.0,
                          token_median=token_median)
    check_summary(st.summary(), want, "triton")


def test_scratch_reuse_across_sizes(rng):
    """Row scratch grows and is reused; the packed row buffer must be restored to -1 after each use."""
    st = ActivationStats(10, device="cpu", backend="triton", topk=3, num_samples=2)
    ref = ActivationStats(10, device="cpu", backend="reference", topk=3, num_samples=2)
    for rows in (5, 70, 3, 70, 1):
        x = make_values((rows, 10), torch.bfloat16, rng)
        sids = torch.arange(rows) // 40
        st.update(x, sample_ids=sids)
        ref.update(x, sample_ids=sids)
    a, b = st.summary(), ref.summary()
    for key in ("topk", "sample_abs_max", "sample_id_out_of_range", "abs_hist", "count"):
        assert str(a[key]) == str(b[key]), key


def test_input_validation(backend):
    st = ActivationStats(6, device="cpu", backend=backend)
    with pytest.raises(ValueError, match="shape"):
        st.update(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="bfloat16"):
        st.update(torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="one entry per row"):
        st.update(torch.zeros(3, 6), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend"):
        ActivationStats(6, device="cpu", backend="cuda")
    with pytest.raises(ValueError, match="token_median"):
        ActivationStats(6, device="cpu", token_median="some")
    # leading-shape masks and integer masks are accepted
    st.update(torch.ones(2, 3, 6), mask=torch.tensor([[1, 0, 1], [0, 0, 1]]))
    assert st.summary()["count"] == 18
